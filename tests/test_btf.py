"""Tests for tetrad.btf: a hand-built blob (kernel independent) and the
running kernel's /sys/kernel/btf/vmlinux."""

import struct

import pytest

from tetrad.btf import (ARRAY, CONST, DATASEC, DECL_TAG, ENUM, ENUM64, FLOAT,
                        FUNC, FUNC_PROTO, FWD, INT, PTR, RESTRICT, STRUCT,
                        TYPE_TAG, TYPEDEF, UNION, VAR, VOLATILE, Btf, BtfError,
                        resolve_offsets)



class BlobBuilder:
    """Assembles a BTF blob; add() returns the new type id (first is 1)."""

    def __init__(self):
        self.strs = bytearray(b"\0")
        self.types: list[list[int]] = []

    def name(self, text: str) -> int:
        if not text:
            return 0
        off = len(self.strs)
        self.strs += text.encode() + b"\0"
        return off

    def add(self, kind, name="", size_or_type=0, vlen=0, kind_flag=0, extra=()):
        info = kind_flag << 31 | kind << 24 | vlen
        self.types.append([self.name(name), info, size_or_type,
                           *(w & 0xFFFFFFFF for w in extra)])
        return len(self.types)

    def composite(self, kind, name, size, members, kind_flag=0):
        extra = []
        for mname, mtype, offset in members:
            extra += [self.name(mname), mtype, offset]
        return self.add(kind, name, size, len(members), kind_flag, extra)

    def build(self, order="<", magic=0xEB9F, version=1):
        words = [w for t in self.types for w in t]
        types = struct.pack(f"{order}{len(words)}I", *words)
        header = struct.pack(order + "HBBIIIII", magic, version, 0, 24,
                             0, len(types), len(types), len(self.strs))
        return header + types + bytes(self.strs)


def bitfield(size, bit_offset):
    """Member offset encoding used when the struct has kind_flag set."""
    return size << 24 | bit_offset


def demo_builder() -> BlobBuilder:
    b = BlobBuilder()
    t_int = b.add(INT, "int", 4, extra=[1 << 24 | 32])           # signed, 32 bits
    t_long = b.add(INT, "long", 8, extra=[1 << 24 | 64])
    t_u3 = b.add(INT, "u3", 4, extra=[3])                        # legacy bitfield int
    t_anon_s = b.composite(STRUCT, "", 8, [("lo", t_int, 0), ("hi", t_int, 32)])
    t_anon_u = b.composite(UNION, "", 8, [("whole", t_long, 0), ("", t_anon_s, 0)])
    t_arr = b.add(ARRAY, "", 0, extra=[t_int, t_int, 3])
    t_demo = len(b.types) + 2                 # the pointer refers forward to demo
    t_ptr = b.add(PTR, "", t_demo)
    assert t_demo == b.composite(STRUCT, "demo", 40, kind_flag=1, members=[
        ("x", t_int, bitfield(0, 0)),
        ("flags", t_int, bitfield(3, 32)),
        ("", t_anon_u, bitfield(0, 64)),
        ("next", t_ptr, bitfield(0, 128)),
        ("arr", t_arr, bitfield(0, 192)),
    ])
    t_const = b.add(CONST, "", t_demo)
    t_typedef = b.add(TYPEDEF, "demo_t", t_const)
    b.composite(STRUCT, "outer", 48, [("d", t_typedef, 64)])
    b.composite(STRUCT, "legacy", 8, [("a", t_u3, 0), ("b", t_u3, 3), ("c", t_int, 32)])
    b.composite(STRUCT, "dup", 0, [])
    b.composite(STRUCT, "dup", 4, [("v", t_int, 0)])
    b.composite(STRUCT, "dup", 8, [("w", t_long, 0)])
    b.add(TYPEDEF, "pair_t", t_anon_s)
    b.add(FWD, "fwd_only")
    b.add(ENUM, "color", 4, vlen=2, kind_flag=1,
          extra=[b.name("RED"), -1, b.name("BLUE"), 7])
    b.add(ENUM, "", 4, vlen=1, extra=[b.name("ANON_A"), 42])
    huge = 1 << 40 | 5
    b.add(ENUM64, "big", 8, vlen=1, extra=[b.name("HUGE"), huge, huge >> 32])
    t_proto = b.add(FUNC_PROTO, "", t_int, vlen=1, extra=[b.name("arg"), t_int])
    b.add(FUNC, "demo_fn", t_proto, vlen=1)
    t_var = b.add(VAR, "counter", t_int, extra=[1])
    b.add(DATASEC, ".data", 4, vlen=1, extra=[t_var, 0, 4])
    b.add(FLOAT, "double", 8)
    b.add(DECL_TAG, "tag", t_demo, extra=[-1])
    b.add(TYPE_TAG, "user", t_int)
    b.add(VOLATILE, "", t_int)
    b.add(RESTRICT, "", t_ptr)
    return b


@pytest.fixture(params=["<", ">"], ids=["little-endian", "big-endian"])
def demo(request):
    return Btf.from_bytes(demo_builder().build(order=request.param))


def test_plain_and_anonymous_members(demo):
    assert demo.member_offset("demo", "x") == 0
    assert demo.member_offset("demo", "whole") == 8   # in anonymous union
    assert demo.member_offset("demo", "lo") == 8      # anon struct in anon union
    assert demo.member_offset("demo", "hi") == 12
    assert demo.member_offset("demo", "next") == 16
    assert demo.member_offset("demo", "arr") == 24
    assert demo.struct_size("demo") == 40


def test_member_sizes(demo):
    assert demo.member_size("demo", "hi") == 4
    assert demo.member_size("demo", "whole") == 8
    assert demo.member_size("demo", "next") == 8
    assert demo.member_size("demo", "arr") == 12
    assert demo.member_size("outer", "d") == 40        # through typedef + const


def test_dotted_path_through_typedef_and_const(demo):
    assert demo.member_offset("outer", "d.hi") == 8 + 12
    assert demo.member_offset("outer", "d.arr") == 8 + 24


@pytest.mark.parametrize("struct_name, member", [("demo", "flags"), ("legacy", "a"), ("legacy", "b")])
def test_bitfields_have_no_byte_offset(demo, struct_name, member):
    with pytest.raises(BtfError, match=f"{struct_name}.{member} is a bitfield"):
        demo.member_offset(struct_name, member)
    with pytest.raises(BtfError, match="bitfield"):
        demo.member_size(struct_name, member)
    assert demo.has_member(struct_name, member)


def test_legacy_struct_without_kind_flag(demo):
    assert demo.member_offset("legacy", "c") == 4


def test_missing_members_and_structs(demo):
    with pytest.raises(BtfError, match="nope"):
        demo.member_offset("outer", "d.nope")
    with pytest.raises(BtfError, match="not a struct/union"):
        demo.member_offset("demo", "x.y")
    with pytest.raises(BtfError, match="pointer to struct demo"):
        demo.member_offset("demo", "next.x")
    with pytest.raises(BtfError, match="no_such_struct"):
        demo.member_offset("no_such_struct", "x")
    assert not demo.has_member("demo", "nope")
    assert not demo.has_member("nope", "x")


def test_struct_lookup(demo):
    assert demo.has_struct("demo")
    assert demo.has_struct("pair_t")                    # typedef of anon struct
    assert demo.member_offset("pair_t", "hi") == 4
    assert not demo.has_struct("fwd_only")
    assert not demo.has_struct("int")
    with pytest.raises(BtfError, match="fwd_only"):
        demo.struct_size("fwd_only")


def test_duplicate_struct_prefers_first_with_members(demo):
    assert demo.struct_size("dup") == 4
    assert demo.member_offset("dup", "v") == 0
    assert not demo.has_member("dup", "w")


def test_enums(demo):
    assert demo.enum_value("color", "RED") == -1
    assert demo.enum_value("color", "BLUE") == 7
    assert demo.enum_value(None, "BLUE") == 7
    assert demo.enum_value(None, "ANON_A") == 42
    assert demo.enum_value("big", "HUGE") == 1 << 40 | 5
    with pytest.raises(BtfError, match="GREEN"):
        demo.enum_value("color", "GREEN")
    with pytest.raises(BtfError, match="GREEN"):
        demo.enum_value(None, "GREEN")
    with pytest.raises(BtfError, match="shape"):
        demo.enum_value("shape", "RED")


def test_funcs(demo):
    assert demo.has_func("demo_fn")
    assert not demo.has_func("demo_t")
    assert not demo.has_func("counter")


def test_resolve_offsets(demo):
    spec = {"OFF_demo__hi": ("demo", "hi"), "OFF_outer__d_arr": ("outer", "d.arr")}
    assert resolve_offsets(demo, spec) == {"OFF_demo__hi": 12, "OFF_outer__d_arr": 32}


def test_malformed_blobs():
    good = demo_builder()
    with pytest.raises(BtfError, match="magic"):
        Btf.from_bytes(good.build(magic=0x1234))
    with pytest.raises(BtfError, match="version"):
        Btf.from_bytes(good.build(version=2))
    with pytest.raises(BtfError, match="too short"):
        Btf.from_bytes(b"\x9f\xeb")
    truncated = BlobBuilder()
    truncated.add(INT, "int", 4)  # INT needs one more word than present
    with pytest.raises(BtfError, match="truncated"):
        Btf.from_bytes(truncated.build())
    unknown = BlobBuilder()
    unknown.add(31, "weird")
    with pytest.raises(BtfError, match="unknown BTF kind 31"):
        Btf.from_bytes(unknown.build())


# -- the running kernel --------------------------------------------------

@pytest.fixture(scope="module")
def kernel():
    return Btf.load()


def test_kernel_layout_invariants(kernel):
    assert kernel.member_offset("task_struct", "pid") + 4 == \
        kernel.member_offset("task_struct", "tgid")
    assert kernel.member_size("task_struct", "tgid") == 4
    assert kernel.member_size("task_struct", "real_parent") == 8
    assert kernel.member_offset("path", "dentry") == 8
    assert kernel.member_offset("fs_struct", "pwd.dentry") == \
        kernel.member_offset("fs_struct", "pwd") + 8
    assert kernel.struct_size("task_struct") > kernel.member_offset("task_struct", "tgid")


def test_kernel_anonymous_members(kernel):
    # qstr.len sits in an anonymous struct inside an anonymous union.
    assert kernel.member_offset("qstr", "len") == kernel.member_offset("qstr", "hash") + 4
    assert kernel.member_size("qstr", "len") == 4
    # mm_struct wraps its fields in an anonymous struct on modern kernels.
    assert kernel.has_member("mm_struct", "arg_start")
    assert kernel.member_offset("mm_struct", "arg_start") > 0
    assert kernel.member_size("mm_struct", "arg_start") == 8


def test_kernel_misc_members(kernel):
    assert kernel.member_size("signal_struct", "live.counter") == 4
    assert kernel.member_offset("signal_struct", "live.counter") == \
        kernel.member_offset("signal_struct", "live")
    assert kernel.has_member("kernfs_node", "id")
    assert kernel.member_size("ns_common", "inum") == 4


def test_kernel_errors(kernel):
    with pytest.raises(BtfError, match="no_such_member_xyz") as err:
        kernel.member_offset("task_struct", "no_such_member_xyz")
    assert "task_struct" in str(err.value)
    assert not kernel.has_member("task_struct", "no_such_member_xyz")
    assert not kernel.has_struct("no_such_struct_xyz")


def test_kernel_funcs_and_enums(kernel):
    assert kernel.has_func("do_sys_openat2")
    assert not kernel.has_func("no_such_fn_xyz")
    assert kernel.enum_value(None, "BPF_PROG_TYPE_KPROBE") == 2
    assert kernel.enum_value("bpf_prog_type", "BPF_PROG_TYPE_KPROBE") == 2

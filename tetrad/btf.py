"""Minimal, fast reader of kernel BTF (BPF Type Format).

Why BTF: the kernel headers installed on a host rarely match the running
kernel exactly, and struct layouts shift between builds (config options,
randomisation, field reordering).  BPF C code therefore never dereferences
kernel structs through header types; instead the daemon reads the running
kernel's own type information from ``/sys/kernel/btf/vmlinux`` and passes
member offsets to the BPF compiler as ``-D`` macros, e.g.
``-DOFF_task_struct__tgid=1268``.

Speed matters because this runs at daemon start-up on a ~5 MB file with
~130k types.  The type section is therefore viewed as a flat array of u32
words: parsing records only where each type starts (one list of ints) and a
few name -> type-id dictionaries; everything else is decoded on demand.

Format reference: the kernel's Documentation/bpf/btf.rst.
"""

from __future__ import annotations

import array
import struct
import sys
from dataclasses import dataclass

__all__ = ["Btf", "BtfError", "FuncProto", "resolve_offsets"]

BTF_MAGIC = 0xEB9F
_HEADER = "HBBIIIII"  # magic, version, flags, hdr_len, type_off/len, str_off/len
_HEADER_SIZE = struct.calcsize("<" + _HEADER)

# BTF kinds (Documentation/bpf/btf.rst, "BTF Type Encoding").
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF = 1, 2, 3, 4, 5, 6, 7, 8
VOLATILE, CONST, RESTRICT, FUNC, FUNC_PROTO, VAR = 9, 10, 11, 12, 13, 14
DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = 15, 16, 17, 18, 19
_MAX_KIND = ENUM64

# Every record is a 3-word btf_type followed by kind-specific data:
# _FIXED[kind] extra words, plus _PER_VLEN[kind] words per vlen entry.
_FIXED = (0, 1, 0, 3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0)
_PER_VLEN = (0, 0, 0, 0, 3, 3, 2, 0, 0, 0, 0, 0, 0, 2, 0, 3, 0, 0, 0, 3)

# Kinds that only qualify another type; they are skipped when resolving.
_MODIFIERS = frozenset((TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG))
_COMPOSITE = (STRUCT, UNION)
_SIZED = frozenset((INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC))
_KIND_NAMES = ("void", "int", "pointer", "array", "struct", "union", "enum",
               "fwd", "typedef", "volatile", "const", "restrict", "func",
               "func_proto", "var", "datasec", "float", "decl_tag",
               "type_tag", "enum")
_POINTER_SIZE = 8  # BTF does not record it; tetrad only targets 64-bit kernels


class BtfError(Exception):
    """Malformed BTF, or a type/member/enumerator that does not exist."""


@dataclass(frozen=True)
class FuncProto:
    """A kernel function's signature as fentry/fexit programs see it: each
    argument (and the return value) in a u64 slot of the program's context,
    of which only `size` bytes are meaningful."""

    proto_id: int                      # its FUNC_PROTO: functions sharing one share this id
    params: tuple[tuple[int, bool], ...]   # (size in bytes, signed) per argument
    ret: tuple[int, bool]              # the same for the return value; (0, False) for void


class Btf:
    """Parsed BTF blob.  Type ids start at 1; id 0 is ``void``."""

    def __init__(self, data: bytes):
        if len(data) < _HEADER_SIZE:
            raise BtfError(f"BTF blob too short ({len(data)} bytes)")
        if struct.unpack_from("<H", data)[0] == BTF_MAGIC:
            order, file_byteorder = "<", "little"
        elif struct.unpack_from(">H", data)[0] == BTF_MAGIC:
            order, file_byteorder = ">", "big"
        else:
            raise BtfError(f"bad BTF magic 0x{struct.unpack_from('<H', data)[0]:04x}"
                           f" (expected 0x{BTF_MAGIC:04x} in either byte order)")
        (_, version, _, hdr_len, type_off, type_len,
         str_off, str_len) = struct.unpack_from(order + _HEADER, data)
        if version != 1:
            raise BtfError(f"unsupported BTF version {version}")
        types_start, strs_start = hdr_len + type_off, hdr_len + str_off
        if (hdr_len < _HEADER_SIZE or type_len % 4
                or types_start + type_len > len(data)
                or strs_start + str_len > len(data)):
            raise BtfError("BTF header sections out of bounds or misaligned")

        words = array.array("I")
        if words.itemsize != 4:
            raise BtfError("platform has no 4-byte array typecode 'I'")
        words.frombytes(data[types_start:types_start + type_len])
        if file_byteorder != sys.byteorder:
            words.byteswap()
        self._w = words
        self._strs = bytes(data[strs_start:strs_start + str_len])
        self._parse_types()
        self._enumerators: dict[bytes, int] | None = None

    @classmethod
    def from_bytes(cls, data: bytes) -> "Btf":
        return cls(data)

    @classmethod
    def load(cls, path: str = "/sys/kernel/btf/vmlinux") -> "Btf":
        with open(path, "rb") as f:
            return cls(f.read())

    # -- parsing ---------------------------------------------------------

    def _parse_types(self) -> None:
        """One pass: word offset of each type, plus name indexes.

        This loop dominates start-up time, so it uses only locals and
        keeps names as raw bytes (lookups encode the query instead).
        """
        w, strs = self._w, self._strs
        find = strs.find
        fixed, per_vlen = _FIXED, _PER_VLEN
        offs = [0]  # placeholder for id 0 (void), so offs[type_id] works
        append = offs.append
        structs: dict[bytes, int] = {}
        typedefs: dict[bytes, int] = {}
        funcs: dict[bytes, int] = {}
        enums: dict[bytes, int] = {}
        index_for = [None] * (_MAX_KIND + 1)
        index_for[STRUCT] = index_for[UNION] = structs
        index_for[TYPEDEF] = typedefs
        index_for[FUNC] = funcs
        index_for[ENUM] = index_for[ENUM64] = enums

        i, end, tid = 0, len(w), 0
        while i < end:
            tid += 1
            append(i)
            info = w[i + 1]
            kind = (info >> 24) & 0x1F
            if not 0 < kind <= _MAX_KIND:
                raise BtfError(f"type id {tid}: unknown BTF kind {kind}")
            index = index_for[kind]
            if index is not None and w[i]:
                name = strs[w[i]:find(b"\0", w[i])]
                if name not in index:
                    index[name] = tid
                elif (index is structs and info & 0xFFFF
                      and not w[offs[index[name]] + 1] & 0xFFFF):
                    # Same-named structs exist; keep the first one with members.
                    index[name] = tid
            i += 3 + fixed[kind] + per_vlen[kind] * (info & 0xFFFF)
        if i != end:
            raise BtfError("BTF type section truncated inside the last type")

        self._offs = offs
        self._structs, self._typedefs = structs, typedefs
        self._funcs, self._enums = funcs, enums

    # -- low-level helpers -----------------------------------------------

    def _kind(self, tid: int) -> int:
        return 0 if tid == 0 else (self._w[self._offs[tid] + 1] >> 24) & 0x1F

    def _name(self, tid: int) -> str:
        off = self._w[self._offs[tid]] if tid else 0
        return self._strs[off:self._strs.find(b"\0", off)].decode(errors="replace")

    def _describe(self, tid: int) -> str:
        """Human-readable type for error messages, e.g. 'pointer to struct mm_struct'."""
        if tid == 0:
            return "void"
        kind = self._kind(tid)
        if kind == PTR:
            return "pointer to " + self._describe(self._w[self._offs[tid] + 2])
        return f"{_KIND_NAMES[kind]} {self._name(tid) or '(anon)'}"

    def _resolve(self, tid: int) -> int:
        """Strip typedef/const/volatile/restrict/type_tag layers."""
        w, offs = self._w, self._offs
        for _ in range(64):  # bounded: malformed BTF could contain a cycle
            if tid == 0 or (w[offs[tid] + 1] >> 24) & 0x1F not in _MODIFIERS:
                return tid
            tid = w[offs[tid] + 2]
        raise BtfError(f"type id {tid}: modifier chain too long (cycle?)")

    def _type_size(self, tid: int) -> int:
        tid = self._resolve(tid)
        kind = self._kind(tid)
        o = self._offs[tid]
        if kind in _SIZED:
            return self._w[o + 2]
        if kind == PTR:
            return _POINTER_SIZE
        if kind == ARRAY:
            return self._w[o + 5] * self._type_size(self._w[o + 3])
        raise BtfError(f"{self._describe(tid)} has no size")

    def _struct_id(self, name: str) -> int | None:
        """Struct/union of that name, or a typedef naming one (e.g. atomic_t)."""
        key = name.encode()
        tid = self._structs.get(key)
        if tid is None and key in self._typedefs:
            target = self._resolve(self._typedefs[key])
            if self._kind(target) in _COMPOSITE:
                tid = target
        return tid

    def _find_member(self, tid: int, name: bytes) -> tuple[int, int, int] | None:
        """Search struct/union ``tid`` (and its anonymous members) for ``name``.

        Returns (bit offset, member type id, bitfield size or 0).
        """
        w, strs = self._w, self._strs
        o = self._offs[tid]
        info = w[o + 1]
        kind_flag = info >> 31
        needle = name + b"\0"
        for m in range(o + 3, o + 3 + 3 * (info & 0xFFFF), 3):
            name_off, mtype, moff = w[m], w[m + 1], w[m + 2]
            # With kind_flag, offset packs bitfield_size<<24 | bit_offset.
            bits, bit_off = (moff >> 24, moff & 0xFFFFFF) if kind_flag else (0, moff)
            if name_off:
                if strs.startswith(needle, name_off):
                    if not kind_flag:
                        bits = self._legacy_bitfield_size(mtype)
                    return bit_off, mtype, bits
                continue
            # Anonymous member: its fields belong to the enclosing scope.
            inner = self._resolve(mtype)
            if self._kind(inner) in _COMPOSITE:
                found = self._find_member(inner, name)
                if found is not None:
                    return bit_off + found[0], found[1], found[2]
        return None

    def _legacy_bitfield_size(self, tid: int) -> int:
        """Without kind_flag, a bitfield is an INT narrower than its storage."""
        tid = self._resolve(tid)
        if self._kind(tid) != INT:
            return 0
        o = self._offs[tid]
        enc = self._w[o + 3]
        nr_bits, bit_off = enc & 0xFF, (enc >> 16) & 0xFF
        return nr_bits if bit_off or nr_bits != 8 * self._w[o + 2] else 0

    def _member(self, struct_name: str, path: str) -> tuple[int, int, int]:
        """Walk a dotted member path.

        Returns (bit offset, member type id, bitfield size or 0); only the
        last component can be a bitfield, as a bitfield has no members.
        """
        tid = self._struct_id(struct_name)
        if tid is None:
            raise BtfError(f"struct {struct_name} not found in BTF")
        bit_offset = 0
        walked = struct_name
        for part in path.split("."):
            container = self._resolve(tid)
            if self._kind(container) not in _COMPOSITE:
                raise BtfError(f"cannot look up {part!r} in {walked}: it is "
                               f"{self._describe(container)}, not a struct/union")
            found = self._find_member(container, part.encode())
            if found is None:
                raise BtfError(f"struct {struct_name} has no member {path!r} "
                               f"({self._describe(container)} has no {part!r})")
            member_bit_offset, tid, bits = found
            bit_offset += member_bit_offset
            walked = f"{walked}.{part}"
        return bit_offset, tid, bits

    def _byte_member(self, struct_name: str, path: str) -> tuple[int, int]:
        """Like _member, but the member must be byte addressable."""
        bit_offset, tid, bits = self._member(struct_name, path)
        if bits or bit_offset % 8:
            raise BtfError(f"{struct_name}.{path} is a bitfield (bit offset "
                           f"{bit_offset}, {bits} bits); it has no byte offset")
        return bit_offset // 8, tid

    # -- public API ------------------------------------------------------

    def member_offset(self, struct_name: str, path: str) -> int:
        """Byte offset of ``path`` (e.g. ``"live.counter"``) in the struct."""
        return self._byte_member(struct_name, path)[0]

    def member_size(self, struct_name: str, path: str) -> int:
        """Size in bytes of the member's type, typedefs resolved."""
        return self._type_size(self._byte_member(struct_name, path)[1])

    def struct_size(self, name: str) -> int:
        tid = self._struct_id(name)
        if tid is None:
            raise BtfError(f"struct {name} not found in BTF")
        return self._w[self._offs[tid] + 2]

    def has_struct(self, name: str) -> bool:
        return self._struct_id(name) is not None

    def has_member(self, struct_name: str, path: str) -> bool:
        """True if the member exists (bitfields included)."""
        try:
            self._member(struct_name, path)
        except BtfError:
            return False
        return True

    def has_func(self, name: str) -> bool:
        """True if the kernel has a BTF FUNC of this name (so it can be hooked)."""
        return name.encode() in self._funcs

    def func_proto(self, name: str) -> FuncProto:
        """The signature of kernel function ``name`` (BtfError if it has no FUNC record)."""
        tid = self._funcs.get(name.encode())
        if tid is None:
            raise BtfError(f"function {name} not found in BTF")
        w = self._w
        proto = w[self._offs[tid] + 2]
        if self._kind(proto) != FUNC_PROTO:
            raise BtfError(f"function {name}: its type is {self._describe(proto)}, not a prototype")
        o = self._offs[proto]
        params = tuple(self._scalar(w[m + 1]) for m in range(o + 3, o + 3 + 2 * (w[o + 1] & 0xFFFF), 2)
                       if w[m + 1])   # type 0: the "..." of a variadic function
        return FuncProto(proto, params, self._scalar(w[o + 2]) if w[o + 2] else (0, False))

    def _scalar(self, tid: int) -> tuple[int, bool]:
        """(size, signed) of an argument or return type."""
        tid = self._resolve(tid)
        kind = self._kind(tid)
        o = self._offs[tid]
        if kind == INT:
            return self._w[o + 2], bool((self._w[o + 3] >> 24) & 1)
        if kind in (ENUM, ENUM64):
            return self._w[o + 2], bool(self._w[o + 1] >> 31)
        return self._type_size(tid), False

    def enum_value(self, enum_name: str | None, enumerator: str) -> int:
        """Value of ``enumerator``; searched in every enum if ``enum_name`` is None."""
        key = enumerator.encode()
        if enum_name is None:
            value = self._all_enumerators().get(key)
            if value is None:
                raise BtfError(f"enumerator {enumerator} not found in any enum")
            return value
        tid = self._enums.get(enum_name.encode())
        if tid is None:
            raise BtfError(f"enum {enum_name} not found in BTF")
        for name, value in self._enum_members(tid):
            if name == key:
                return value
        raise BtfError(f"enum {enum_name} has no enumerator {enumerator}")

    # -- enums -----------------------------------------------------------

    def _enum_members(self, tid: int):
        """Yield (name bytes, value) of an ENUM/ENUM64, honouring signedness."""
        w, strs = self._w, self._strs
        o = self._offs[tid]
        info = w[o + 1]
        signed = info >> 31  # kind_flag on enums means "signed values"
        vlen = info & 0xFFFF
        if (info >> 24) & 0x1F == ENUM:
            for m in range(o + 3, o + 3 + 2 * vlen, 2):
                value = w[m + 1]
                if signed and value & 0x80000000:
                    value -= 1 << 32
                yield strs[w[m]:strs.find(b"\0", w[m])], value
        else:
            for m in range(o + 3, o + 3 + 3 * vlen, 3):
                value = w[m + 1] | (w[m + 2] << 32)
                if signed and value & (1 << 63):
                    value -= 1 << 64
                yield strs[w[m]:strs.find(b"\0", w[m])], value

    def _all_enumerators(self) -> dict[bytes, int]:
        """Built on first use: enumerators of all (also anonymous) enums."""
        if self._enumerators is None:
            table: dict[bytes, int] = {}
            for tid in range(1, len(self._offs)):
                if self._kind(tid) in (ENUM, ENUM64):
                    for name, value in self._enum_members(tid):
                        table.setdefault(name, value)
            self._enumerators = table
        return self._enumerators


def resolve_offsets(btf: Btf, spec: dict[str, tuple[str, str]]) -> dict[str, int]:
    """Map macro names to member offsets, e.g.
    ``{"OFF_task_struct__tgid": ("task_struct", "tgid")}`` -> ``{...: 1268}``."""
    return {macro: btf.member_offset(struct_name, path)
            for macro, (struct_name, path) in spec.items()}

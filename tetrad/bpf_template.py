"""One compile, many instances of a BCC program.

BCC compiles a C program and creates its maps in one step (`BPF(text=...)`),
and the clang run inside it costs about a second for bpf/policy.c (several
under load) -- most of the time a new tracing policy took to start.  Yet
policies differ only in what their maps hold.  A `Template` compiles once;
each `Instance` gets maps of its own, created from the template's table
descriptions, and programs loaded from the template's bytecode with the
template's map fds replaced by its own (BCC writes a map's fd into each
instruction that loads it, as a BPF_PSEUDO_MAP_FD immediate).  An instance is
a `bcc.BPF`: tables, attach_*, ring buffers and cleanup() work as usual.

The template's own maps are never used: their fds are pointed at /dev/null,
which gives their kernel memory back (about 10 MB for bpf/policy.c) while
BCC keeps closing the same fd numbers when the template goes.
"""

from __future__ import annotations

import atexit
import ctypes
import functools
import json
import logging
import os
import struct
import time
from collections import OrderedDict
from dataclasses import dataclass

from .bpf_loader import compile_program

log = logging.getLogger("tetrad.bpf")

LD_IMM64 = 0x18                  # BPF_LD | BPF_IMM | BPF_DW: two instruction slots
PSEUDO_MAP_FD, PSEUDO_MAP_VALUE = 1, 2   # src_reg of an LD_IMM64 holding a map fd
_IMM = struct.Struct("<i")


class TemplateError(Exception):
    """The installed BCC cannot make instances (the caller compiles instead)."""


def _libbcc():
    from bcc.libbcc import lib
    for name, restype, argtypes in (
            ("bpf_num_tables", ctypes.c_size_t, [ctypes.c_void_p]),
            ("bpf_table_name", ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_size_t]),
            ("bpf_table_fd_id", ctypes.c_int, [ctypes.c_void_p, ctypes.c_size_t]),
            ("bpf_table_key_size_id", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
            ("bpf_table_leaf_size_id", ctypes.c_size_t, [ctypes.c_void_p, ctypes.c_size_t]),
            ("bcc_create_map", ctypes.c_int, [ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
                                               ctypes.c_int, ctypes.c_int, ctypes.c_int])):
        try:
            fn = getattr(lib, name)
        except AttributeError as e:
            raise TemplateError(f"libbcc has no {name}") from e
        fn.restype, fn.argtypes = restype, argtypes
    return lib


@dataclass(frozen=True)
class TableSpec:
    id: int
    name: bytes
    type: int
    key_size: int
    leaf_size: int
    max_entries: int
    flags: int
    fd: int          # the template's, as its bytecode holds it


class Template:
    """A compiled program whose instances share its bytecode."""

    def __init__(self, source: str, macros: dict):
        self.lib = _libbcc()
        started = time.monotonic()
        self.bpf = compile_program(source, macros, autoattach=False)
        self.compile_s = time.monotonic() - started
        self.pristine = dict(vars(self.bpf))   # a BPF object's state before anything is loaded
        module, lib = self.bpf.module, self.lib
        self.tables: dict[bytes, TableSpec] = {}
        for i in range(lib.bpf_num_tables(module)):
            spec = TableSpec(i, lib.bpf_table_name(module, i), lib.bpf_table_type_id(module, i),
                             lib.bpf_table_key_size_id(module, i), lib.bpf_table_leaf_size_id(module, i),
                             lib.bpf_table_max_entries_id(module, i), lib.bpf_table_flags_id(module, i),
                             lib.bpf_table_fd_id(module, i))
            self.tables[spec.name] = spec
        self._index = {spec.fd: spec.id for spec in self.tables.values()}   # instances' map_fds by id
        self._code: dict[bytes, tuple[bytes, list[tuple[int, int]]]] = {}
        self._types: dict[bytes, tuple] = {}
        self.instances = 0
        self.destroyed = False
        try:   # every function's map references now: one this cannot place fails here, not in a load
            for i in range(lib.bpf_num_functions(module)):
                self.code(lib.bpf_function_name(module, i))
        except TemplateError:
            self.destroy()
            raise
        self._release_maps()

    def _release_maps(self) -> None:
        devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
        try:
            for spec in self.tables.values():
                os.dup2(devnull, spec.fd, inheritable=False)
        finally:
            os.close(devnull)

    def code(self, func_name: bytes) -> tuple[bytes, list[tuple[int, int]]]:
        """A function's instructions and, per map reference, (byte offset of
        its immediate, index of the table)."""
        if func_name not in self._code:
            start = self.lib.bpf_function_start(self.bpf.module, func_name)
            if not start:
                raise Exception(f"Unknown program {func_name.decode()}")   # as BCC says it
            code = ctypes.string_at(start, self.lib.bpf_function_size(self.bpf.module, func_name))
            relocations, off = [], 0
            while off + 16 <= len(code):
                if code[off] == LD_IMM64:
                    if code[off + 1] >> 4 in (PSEUDO_MAP_FD, PSEUDO_MAP_VALUE):
                        (fd,) = _IMM.unpack_from(code, off + 4)
                        if fd not in self._index:
                            raise TemplateError(f"{func_name.decode()}: map fd {fd} at byte {off} "
                                                "is none of the program's tables")
                        relocations.append((off + 4, self._index[fd]))
                    off += 16
                else:
                    off += 8
            self._code[func_name] = (code, relocations)
        return self._code[func_name]

    def types(self, name: bytes) -> tuple:
        """The ctypes key and leaf types of a table, decoded from its
        descriptions as BPF.get_table does (a table object's own Leaf may be
        reshaped already: per-CPU tables hold one per CPU)."""
        if name not in self._types:
            from bcc import BPF
            self._types[name] = tuple(
                BPF._decode_table_type(json.loads(desc(self.bpf.module, name).decode()))
                for desc in (self.lib.bpf_table_key_desc, self.lib.bpf_table_leaf_desc))
        return self._types[name]

    def instantiate(self):
        return instance_class()(self)

    def destroy(self) -> None:
        """Free the compiled module (its instances must be gone)."""
        if not self.destroyed:
            self.destroyed = True
            self.bpf.cleanup()


@functools.cache
def instance_class():
    """The class of instances, made when first needed: `tetrad version` runs without BCC."""
    from bcc import BPF
    from bcc.table import Table

    class Instance(BPF):
        """Maps of its own, programs from the template's bytecode; never compiles."""

        def __init__(self, template: Template):   # no BPF.__init__: that would compile
            for key, value in template.pristine.items():
                setattr(self, key, type(value)() if isinstance(value, (dict, list, set)) else value)
            self.template = template
            self.map_fds: list[int] = []
            try:
                for spec in template.tables.values():
                    fd = template.lib.bcc_create_map(spec.type, spec.name, spec.key_size, spec.leaf_size,
                                                     spec.max_entries, spec.flags)
                    if fd < 0:
                        err = ctypes.get_errno() or -fd
                        raise OSError(err, f"cannot create map {spec.name.decode()}: {os.strerror(err)}")
                    self.map_fds.append(fd)
            except BaseException:
                for fd in self.map_fds:
                    os.close(fd)
                raise
            template.instances += 1
            atexit.register(self.cleanup)

        def _relocated(self, func_name: bytes) -> bytes:
            code, relocations = self.template.code(func_name)
            out = bytearray(code)
            for off, index in relocations:
                _IMM.pack_into(out, off, self.map_fds[index])
            return bytes(out)

        def dump_func(self, func_name):
            return self._relocated(func_name if isinstance(func_name, bytes) else func_name.encode())

        def load_func(self, func_name, prog_type, device=None, attach_type=-1):
            func_name = func_name if isinstance(func_name, bytes) else func_name.encode()
            if func_name in self.funcs:
                return self.funcs[func_name]
            code = self._relocated(func_name)
            buf = ctypes.create_string_buffer(code, len(code))
            lib = self.template.lib
            fd = lib.bcc_func_load(self.module, prog_type, func_name, ctypes.cast(buf, ctypes.c_void_p),
                                   len(code), lib.bpf_module_license(self.module),
                                   lib.bpf_module_kern_version(self.module), 0, None, 0, device, attach_type)
            if fd < 0:
                raise Exception(f"Failed to load BPF program {func_name.decode()}: "
                                f"{os.strerror(ctypes.get_errno() or -fd)}")
            fn = BPF.Function(self, func_name, fd)
            self.funcs[func_name] = fn
            return fn

        def get_table(self, name, keytype=None, leaftype=None, reducer=None):
            name = name if isinstance(name, bytes) else name.encode()
            spec = self.template.tables.get(name)
            if spec is None:
                raise KeyError(name)
            key, leaf = self.template.types(name)
            return Table(self, spec.id, self.map_fds[spec.id], keytype or key, leaftype or leaf, name,
                         reducer=reducer)

        def close(self):
            for name, fn in list(self.funcs.items()):
                os.close(fn.fd)
                del self.funcs[name]
            if self.module:   # the template's: not destroyed here
                self.module = None
                for fd in self.map_fds:
                    os.close(fd)
                self.map_fds = []
                self.template.instances -= 1
                atexit.unregister(self.cleanup)   # policies come and go: keep no closed instance

    return Instance


class TemplateCache:
    """Templates by (source, macros), the most recently used kept; one that
    falls out is destroyed once its last instance is closed."""

    def __init__(self, keep: int = 4):
        self.keep = keep
        self._templates: OrderedDict[tuple, Template] = OrderedDict()
        self._retired: list[Template] = []
        self._unusable: TemplateError | None = None   # once BCC could not make instances

    def instance(self, source: str, macros: dict):
        """(a new instance, the seconds spent compiling for it: 0 when the
        template was already there).  TemplateError if BCC cannot make one."""
        if self._unusable is not None:
            raise self._unusable
        key = (source, tuple(sorted((k, str(v)) for k, v in macros.items())))
        template = self._templates.get(key)
        compiled = 0.0
        if template is None:
            try:
                template = Template(source, macros)
            except TemplateError as e:
                log.warning("BCC cannot make instances of a compiled program (%s): "
                            "each one is compiled", e)
                self._unusable = e
                raise
            compiled = template.compile_s
            self._templates[key] = template
        self._templates.move_to_end(key)
        self._retire()
        return template.instantiate(), compiled

    def _retire(self) -> None:
        while len(self._templates) > self.keep:
            self._retired.append(self._templates.popitem(last=False)[1])
        for t in [t for t in self._retired if t.instances == 0]:
            t.destroy()
            self._retired.remove(t)

    def close(self) -> None:
        """Destroy the templates no instance uses any more."""
        self._retired += self._templates.values()
        self._templates.clear()
        self._retire()

"""Tests for tetrad.config: layering, parsing, error messages, argparse glue."""

import argparse
import json
import socket

import pytest

from tetrad import config
from tetrad.config import OPTIONS, Config, ConfigError, Option, load, parse_duration


@pytest.fixture
def cfgdir(tmp_path):
    """A config directory; helpers write tetrad.yaml and drop-ins into it."""
    (tmp_path / "tetrad.conf.d").mkdir()
    return tmp_path


def write_yaml(cfgdir, text):
    path = cfgdir / "tetrad.yaml"
    path.write_text(text)
    return str(path)


def write_dropin(cfgdir, name, text):
    path = cfgdir / "tetrad.conf.d" / name
    path.write_text(text)
    return str(path)


def load_in(cfgdir, cli_args=None, env=None):
    """load() with every file layer inside cfgdir."""
    return load(cli_args, env=env or {},
                config_file=str(cfgdir / "tetrad.yaml"),
                dropin_dir=str(cfgdir / "tetrad.conf.d"))


def make_parser():
    parser = argparse.ArgumentParser()
    parser.add_argument("--unrelated", default="x")  # the caller's own flags
    config.add_arguments(parser)
    return parser


# --- defaults and layering --------------------------------------------------

def test_defaults_when_nothing_configured(tmp_path):
    cfg = load(env={}, config_file=str(tmp_path / "missing.yaml"),
               dropin_dir=str(tmp_path / "missing.d"))
    assert cfg.as_dict() == {o.name: o.default for o in OPTIONS}
    assert all(cfg.source(o.name) == "default" for o in OPTIONS)
    assert cfg.export_filename == ""
    assert cfg.export_file_perm == 0o600
    assert cfg.log_level == "info"
    assert cfg.enable_journal is True


def test_precedence_of_all_five_layers(cfgdir):
    yaml_path = write_yaml(cfgdir, "rb-size: 1K\n")
    dropin_path = write_dropin(cfgdir, "rb-size", "2K\n")
    env = {"TETRAD_RB_SIZE": "3K"}
    cli = {"rb-size": "4K"}

    cfg = load_in(cfgdir, cli, env)
    assert (cfg.rb_size, cfg.source("rb-size")) == (4096, "command line")
    cfg = load_in(cfgdir, None, env)
    assert (cfg.rb_size, cfg.source("rb-size")) == (3072, "environment TETRAD_RB_SIZE")
    cfg = load_in(cfgdir)
    assert (cfg.rb_size, cfg.source("rb-size")) == (2048, dropin_path)
    (cfgdir / "tetrad.conf.d" / "rb-size").unlink()
    cfg = load_in(cfgdir)
    assert (cfg.rb_size, cfg.source("rb-size")) == (1024, yaml_path)
    (cfgdir / "tetrad.yaml").unlink()
    cfg = load_in(cfgdir)
    assert (cfg.rb_size, cfg.source("rb-size")) == (0, "default")


def test_layers_combine_per_option(cfgdir):
    write_yaml(cfgdir, "export-filename: /var/log/a.log\nlog-level: debug\n")
    write_dropin(cfgdir, "log-level", "warn\n")
    cfg = load_in(cfgdir, env={"TETRAD_EXPORT_STDOUT": "yes"})
    assert cfg.export_filename == "/var/log/a.log"
    assert cfg.log_level == "warn"
    assert cfg.export_stdout is True


def test_default_paths_follow_tetrad_config_dir(cfgdir):
    write_yaml(cfgdir, "procfs: /host/proc\n")
    write_dropin(cfgdir, "btf", "/boot/vmlinux-btf")
    cfg = load(env={"TETRAD_CONFIG_DIR": str(cfgdir)})
    assert cfg.procfs == "/host/proc"
    assert cfg.btf == "/boot/vmlinux-btf"
    assert cfg.source("procfs") == str(cfgdir / "tetrad.yaml")


# --- value parsing ------------------------------------------------------------

@pytest.mark.parametrize("type_, raw, expected", [
    ("str", "/var/log/x", "/var/log/x"),
    ("str", "", ""),
    ("int", "42", 42),
    ("int", " -1 ", -1),
    ("int", 7, 7),
    ("bool", "TRUE", True),
    ("bool", "yes", True),
    ("bool", "On", True),
    ("bool", "1", True),
    ("bool", "false", False),
    ("bool", "no", False),
    ("bool", "OFF", False),
    ("bool", "0", False),
    ("bool", False, False),
    ("float", "1.5", 1.5),
    ("float", 2, 2.0),
    ("size", "65536", 65536),
    ("size", "64k", 64 * 1024),
    ("size", "8M", 8 * 1024**2),
    ("size", "8MiB", 8 * 1024**2),
    ("size", "1Gi", 1024**3),
    ("size", 4096, 4096),
    ("octal", "600", 0o600),
    ("octal", "0640", 0o640),
    ("octal", "0o644", 0o644),
    ("octal", 0o600, 384),
    ("list", "a, b,,c", ("a", "b", "c")),
    ("list", "", ()),
    ("list", ["a", "b"], ("a", "b")),
    ("duration", " 1h30m ", "1h30m"),
])
def test_type_parsing(type_, raw, expected):
    value = Option("x", type_, expected, "help").parse(raw)
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("type_, default, raw, message", [
    ("str", "", 5, "expected a string, got 5"),
    ("int", 0, "ten", 'expected an integer, got "ten"'),
    ("int", 0, "1.5", 'expected an integer, got "1.5"'),
    ("int", 0, True, "expected an integer, got True"),
    ("bool", False, "maybe", 'expected a boolean (true/false, yes/no, on/off, 1/0), got "maybe"'),
    ("float", 0.0, "fast", 'expected a number, got "fast"'),
    ("float", 0.0, "nan", 'expected a number, got "nan"'),
    ("size", 0, "lots", 'expected a size in bytes such as 65536, 64K, 8M or 1Gi, got "lots"'),
    ("size", 0, "8X", 'expected a size in bytes such as 65536, 64K, 8M or 1Gi, got "8X"'),
    ("size", 0, -1, "expected a size in bytes such as 65536, 64K, 8M or 1Gi, got -1"),
    ("octal", 0, "rw", 'expected an octal file mode such as 600 or 0o640, got "rw"'),
    ("octal", 0, "680", 'expected an octal file mode such as 600 or 0o640, got "680"'),
    ("octal", 0, 0o10000, "expected an octal file mode such as 600 or 0o640, got 4096"),
    ("list", (), 3, "expected a comma-separated list or a list of strings, got 3"),
    ("duration", "0s", "soon", 'expected a duration such as 30s, 1h30m or 500ms, got "soon"'),
])
def test_type_parsing_errors(type_, default, raw, message):
    with pytest.raises(ValueError) as exc:
        Option("x", type_, default, "help").parse(raw)
    assert str(exc.value) == message


def test_choices_are_case_insensitive_and_canonical():
    opt = config._BY_NAME["log-level"]
    assert opt.parse("DEBUG") == "debug"
    with pytest.raises(ValueError) as exc:
        opt.parse("loud")
    assert str(exc.value) == 'invalid choice "loud" (choose from debug, info, warn, error)'


def test_minimum():
    with pytest.raises(ValueError, match='must be at least -1, got "-2"'):
        config._BY_NAME["export-rate-limit"].parse("-2")


def test_option_table_is_well_formed():
    assert len({o.name for o in OPTIONS}) == len(OPTIONS)
    with pytest.raises(ValueError, match="unknown type"):
        Option("x", "bytes", 0, "help")
    with pytest.raises(ValueError):
        Option("x", "int", "10", "help")  # defaults must already be parsed


@pytest.mark.parametrize("text, seconds", [
    ("0", 0.0), ("0s", 0.0), ("10s", 10.0), ("500ms", 0.5), ("1h30m", 5400.0),
    ("1.5h", 5400.0), ("2m3s", 123.0), ("250us", 0.00025), ("100ns", 1e-7),
])
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "10", "1d", "-1s", "1h 30m", "h", "1.2.3s", "s10"])
def test_parse_duration_rejects(text):
    with pytest.raises(ValueError, match="expected a duration"):
        parse_duration(text)


# --- YAML layer ---------------------------------------------------------------

def test_yaml_values_are_taken_as_written(cfgdir):
    write_yaml(cfgdir, "\n".join([
        "export-file-perm: 640",     # octal, like chmod, not decimal 640
        "node-name: no",             # a string, not YAML 1.1's False
        "export-file-compress: yes",
        "export-file-max-size-mb: 20",
        "export-filename:",          # empty value
        'log-level: "warn"',
        "export-file-rotation-interval: 1h",
    ]))
    cfg = load_in(cfgdir)
    assert cfg.export_file_perm == 0o640
    assert cfg.node_name == "no"
    assert cfg.export_file_compress is True
    assert cfg.export_file_max_size_mb == 20
    assert cfg.export_filename == ""
    assert cfg.log_level == "warn"
    assert cfg.export_file_rotation_interval == "1h"


def test_yaml_empty_file_is_fine(cfgdir):
    write_yaml(cfgdir, "# nothing set\n")
    assert load_in(cfgdir).as_dict() == {o.name: o.default for o in OPTIONS}


def test_yaml_bad_value_names_file_and_key(cfgdir):
    path = write_yaml(cfgdir, "export-file-max-size-mb: ten\n")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == f'{path}: export-file-max-size-mb: expected an integer, got "ten"'


def test_yaml_list_value_for_scalar_option(cfgdir):
    path = write_yaml(cfgdir, "procfs: [a, b]\n")
    with pytest.raises(ConfigError, match=f"^{path}: procfs: expected a string, got "):
        load_in(cfgdir)


def test_yaml_unknown_key(cfgdir):
    path = write_yaml(cfgdir, "export-filenam: /tmp/x\n")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == (
        f'{path}: unknown option "export-filenam" (did you mean "export-filename"?)')


@pytest.mark.parametrize("text, message", [
    ("- a\n- b\n", "expected a mapping of option names to values, got a list"),
    ("just text\n", 'expected a mapping of option names to values, got "just text"'),
])
def test_yaml_not_a_mapping(cfgdir, text, message):
    path = write_yaml(cfgdir, text)
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == f"{path}: {message}"


def test_yaml_syntax_error_names_file_and_line(cfgdir):
    path = write_yaml(cfgdir, "procfs: /proc\nbtf: [unclosed\n")
    with pytest.raises(ConfigError, match=f"^{path}:3: invalid YAML: "):
        load_in(cfgdir)


def test_yaml_duplicate_key(cfgdir):
    path = write_yaml(cfgdir, "procfs: /a\nbtf: /b\nprocfs: /c\n")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == f'{path}: option "procfs" given twice (lines 1 and 3)'


def test_yaml_path_is_a_directory(cfgdir):
    (cfgdir / "tetrad.yaml").mkdir()
    with pytest.raises(ConfigError, match="tetrad.yaml: cannot read: "):
        load_in(cfgdir)


# --- drop-in layer ------------------------------------------------------------

def test_dropin_trailing_whitespace_stripped(cfgdir):
    write_dropin(cfgdir, "export-filename", "/var/log/tetrad/tetrad.log \n\n")
    write_dropin(cfgdir, "export-stdout", "true\n")
    cfg = load_in(cfgdir)
    assert cfg.export_filename == "/var/log/tetrad/tetrad.log"
    assert cfg.export_stdout is True


def test_dropin_skips_dotfiles_backups_and_directories(cfgdir):
    write_dropin(cfgdir, ".hidden", "junk")
    write_dropin(cfgdir, "export-filename~", "junk")
    write_dropin(cfgdir, ".export-filename.swp", "junk")
    (cfgdir / "tetrad.conf.d" / "subdir").mkdir()
    assert load_in(cfgdir).export_filename == ""


def test_dropin_unknown_option(cfgdir):
    path = write_dropin(cfgdir, "foo-bar", "1")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == f'{path}: unknown option "foo-bar"'


def test_dropin_bad_value_and_sorted_order(cfgdir):
    # Both files are bad; the first in sorted order is reported.
    path = write_dropin(cfgdir, "export-file-perm", "rw-------")
    write_dropin(cfgdir, "verbose", "lots")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir)
    assert str(exc.value) == (
        f'{path}: expected an octal file mode such as 600 or 0o640, got "rw-------"')


# --- environment layer ----------------------------------------------------------

def test_env_sets_options(cfgdir):
    cfg = load_in(cfgdir, env={"TETRAD_EXPORT_FILENAME": "/tmp/e.log",
                               "TETRAD_EXPORT_FILE_COMPRESS": "on",
                               "TETRAD_PROCESS_CACHE_SIZE": "1024"})
    assert cfg.export_filename == "/tmp/e.log"
    assert cfg.export_file_compress is True
    assert cfg.process_cache_size == 1024
    assert cfg.source("process-cache-size") == "environment TETRAD_PROCESS_CACHE_SIZE"


def test_env_bad_value(cfgdir):
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir, env={"TETRAD_LOG_LEVEL": "loud"})
    assert str(exc.value) == ('environment TETRAD_LOG_LEVEL: invalid choice "loud" '
                              '(choose from debug, info, warn, error)')


def test_env_unknown_variable(cfgdir):
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir, env={"TETRAD_EXPORT_FILENAM": "/tmp/x"})
    assert str(exc.value) == ('environment TETRAD_EXPORT_FILENAM: unknown option '
                              '"export-filenam" (did you mean TETRAD_EXPORT_FILENAME?)')


def test_env_allowlisted_and_foreign_variables_ignored(cfgdir):
    cfg = load_in(cfgdir, env={"TETRAD_BPF_DIR": "/x", "TETRAD_CONFIG_DIR": str(cfgdir),
                               "PATH": "/bin", "NODE_NAME": "n1"})
    assert all(cfg.source(o.name) == "default" for o in OPTIONS)


# --- command line ----------------------------------------------------------------

@pytest.mark.parametrize("argv, expected, source", [
    (["--export-stdout"], True, "command line"),
    (["--export-stdout=true"], True, "command line"),
    (["--export-stdout=false"], False, "command line"),
    ([], False, "default"),
])
def test_cli_boolean_flags(cfgdir, argv, expected, source):
    args = make_parser().parse_args(argv)
    cfg = load_in(cfgdir, args)
    assert cfg.export_stdout is expected
    assert cfg.source("export-stdout") == source


def test_cli_bool_false_overrides_lower_layers(cfgdir):
    write_dropin(cfgdir, "enable-journal", "true")
    args = make_parser().parse_args(["--enable-journal=no"])
    assert load_in(cfgdir, args, env={"TETRAD_ENABLE_JOURNAL": "1"}).enable_journal is False


def test_cli_absent_flags_do_not_override(cfgdir):
    write_yaml(cfgdir, "rb-size: 8M\n")
    args = make_parser().parse_args(["--log-level", "debug"])
    assert not hasattr(args, "rb_size")
    cfg = load_in(cfgdir, args)
    assert cfg.rb_size == 8 * 1024**2
    assert cfg.log_level == "debug"
    assert args.unrelated == "x"  # the caller's own flags are left alone


def test_cli_bad_value(cfgdir):
    args = make_parser().parse_args(["--rb-size", "huge"])
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir, args)
    assert str(exc.value) == ('command line --rb-size: expected a size in bytes '
                              'such as 65536, 64K, 8M or 1Gi, got "huge"')


def test_cli_dict_accepts_either_spelling_and_skips_none(cfgdir):
    cfg = load_in(cfgdir, {"export_filename": "/a", "export-file-perm": "0644", "btf": None})
    assert cfg.export_filename == "/a"
    assert cfg.export_file_perm == 0o644
    assert cfg.source("btf") == "default"


def test_cli_dict_unknown_key(cfgdir):
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir, {"rb-sise": "1M"})
    assert str(exc.value) == ('command line --rb-sise: unknown option "rb-sise" '
                              '(did you mean "rb-size"?)')


def test_help_shows_defaults():
    text = make_parser().format_help()
    assert "(default: 0600)" in text
    assert "(default: 65536)" in text
    assert "--export-stdout [BOOL]" in text
    assert "{debug,info,warn,error}" in text


# --- Config object and cross-option checks ----------------------------------------

def test_config_access_and_immutability(cfgdir):
    cfg = load_in(cfgdir, {"export-filename": "/x.log"})
    assert cfg.export_filename == cfg.get("export-filename") == "/x.log"
    assert cfg.source("export-filename") == "command line"
    assert cfg.source("log-level") == "default"
    with pytest.raises(AttributeError):
        cfg.export_filename = "/y"
    with pytest.raises(AttributeError):
        cfg.no_such_option
    with pytest.raises(KeyError):
        cfg.get("no-such-option")
    assert "export-filename='/x.log'" in repr(cfg)


def test_as_dict_is_json_ready_and_detached(cfgdir):
    cfg = load_in(cfgdir)
    d = cfg.as_dict()
    assert list(d) == [o.name for o in OPTIONS]
    json.dumps(d)
    d["export-filename"] = "changed"
    assert cfg.export_filename == ""


def test_rb_size_and_total_are_exclusive(cfgdir):
    path = write_yaml(cfgdir, "rb-size: 1M\n")
    with pytest.raises(ConfigError) as exc:
        load_in(cfgdir, env={"TETRAD_RB_SIZE_TOTAL": "8M"})
    assert str(exc.value) == (
        f"rb-size ({path}) and rb-size-total (environment TETRAD_RB_SIZE_TOTAL) "
        "cannot both be set")


def test_node_name():
    cfg = Config({"node-name": ""}, {"node-name": "default"})
    assert config.node_name(cfg, env={"NODE_NAME": "from-env"}) == "from-env"
    named = Config({"node-name": "n1"}, {"node-name": "command line"})
    assert config.node_name(named, env={"NODE_NAME": "from-env"}) == "n1"
    assert config.node_name(cfg, env={}) == socket.gethostname()

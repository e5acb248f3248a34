"""One key parser for flags, arguments and the config (shmjanitor/keys.py), every form."""

from __future__ import annotations

import json

import pytest
from segments import Spec, cli, make, rows

from shmjanitor import config
from shmjanitor.errors import ConfigError
from shmjanitor.keys import parse_id, parse_key, segment_key

GOOD = {
    "1234": 1234,
    "+1234": 1234,
    "0x1234abcd": 0x1234ABCD,
    "0X1234ABCD": 0x1234ABCD,
    "0x0000abcd": 0xABCD,  # as ipcs prints it: eight hex digits
    "-1": 0xFFFFFFFF,  # the kernel's signed spelling (/proc/sysvipc/shm prints "%10d")
    "-0x1": 0xFFFFFFFF,  # ipcrm's strtoul reads this as -1 too
    "-2147483648": 0x80000000,  # the most negative key_t
    "-0x80000000": 0x80000000,
    "4294967295": 0xFFFFFFFF,
    "0xffffffff": 0xFFFFFFFF,
    "2147483648": 0x80000000,
}
BAD = {
    "-4294967297": "out of range",  # used to wrap silently to 0xffffffff
    "-4294967296": "out of range",  # used to wrap to 0, then be called IPC_PRIVATE
    "-2147483649": "out of range",
    "4294967296": "out of range",
    "0x100000000": "out of range",
    "-0x80000001": "out of range",
    "010": "leading 0",  # octal to ipcrm, decimal to everyone else
    "zz": "not a key",
    "": "not a key",
    " 12": "not a key",
    "1_000": "not a key",
    "0x": "not a key",
    "12abc": "not a key",
    "0o17": "not a key",
    "--1": "not a key",
}


@pytest.mark.parametrize("text,key", GOOD.items())
def test_each_accepted_form(text, key):
    assert parse_key(text) == key
    assert segment_key(text) == key


@pytest.mark.parametrize("text,why", BAD.items())
def test_each_refused_form_names_the_input(text, why):
    with pytest.raises(ValueError) as e:
        parse_key(text)
    assert why in str(e.value) and repr(text) in str(e.value)


@pytest.mark.parametrize("text", ["0", "0x0", "-0", "0x00000000"])
def test_ipc_private_names_no_segment_but_may_be_protected(text):
    with pytest.raises(ValueError, match="IPC_PRIVATE"):
        segment_key(text)
    assert parse_key(text, private_ok=True) == 0


def test_integers_from_the_config_file():
    assert parse_key(-1) == 0xFFFFFFFF
    assert parse_key(0x5EED) == 0x5EED
    for n in (-(1 << 31) - 1, 1 << 32, -(1 << 32)):
        with pytest.raises(ValueError, match="out of range"):
            parse_key(n)
    with pytest.raises(ValueError):
        parse_key(True)  # a TOML boolean is an int to Python, never a key


@pytest.mark.parametrize("text,shmid", [("0", 0), ("7", 7), ("2147483647", 2147483647)])
def test_ids(text, shmid):
    assert parse_id(text) == shmid


@pytest.mark.parametrize("text", ["-1", "2147483648", "0x10", "abc", "", "07", "+3"])
def test_bad_ids(text):
    with pytest.raises(ValueError, match="not a segment id"):
        parse_id(text)


def test_config_accepts_every_key_form():
    cfg = config.parse({"protect_keys": [-1, "0x5eed", "-0x2", 4660, "-2147483648"]}, "t.toml")
    assert cfg.protect_keys == {0xFFFFFFFF, 0x5EED, 0xFFFFFFFE, 4660, 0x80000000}


@pytest.mark.parametrize("value", [-4294967297, 1 << 32, "zz", "010", True])
def test_config_refuses_a_bad_key_naming_file_and_value(value):
    with pytest.raises(ConfigError) as e:
        config.parse({"protect_keys": [value]}, "t.toml")
    assert "t.toml" in str(e.value) and "protect_keys" in str(e.value)


@pytest.mark.parametrize("form", ["-1", "-0x1", "0xffffffff", "4294967295"])
def test_rm_by_each_spelling_of_a_high_key(tmp_path, form):
    victim = make(Spec(key=0xFFFFFFFF)).ids[0]
    other = make(Spec(key=0x7FFFFFFF)).ids[0]
    r = cli("rm", "--state-dir", str(tmp_path), "--key", form, "--json")
    assert r.exit_code == 0, r.output
    assert [x["id"] for x in json.loads(r.stdout)["results"]] == [victim]
    assert set(rows()) == {other}


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--key", "-4294967297"], "'-4294967297'"),
        (["--key", "-4294967296"], "'-4294967296'"),
        (["--key", "0"], "IPC_PRIVATE"),
        (["--key", "010"], "'010'"),
        (["--", "-1"], "'-1'"),  # a malformed id is a usage error, not "no such segment"
        (["abc"], "'abc'"),
        (["2147483648"], "'2147483648'"),
    ],
)
def test_rm_refuses_bad_keys_and_ids_with_exit_2(tmp_path, args, needle):
    keep = make(Spec(key=0xFFFFFFFF)).ids[0]
    r = cli("rm", "--state-dir", str(tmp_path), *args)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output
    assert set(rows()) == {keep}


def test_reaping_parse_key_is_the_same_parser():
    from shmjanitor.reaping import parse_key as reaping_parse_key

    assert reaping_parse_key("-1") == 0xFFFFFFFF
    with pytest.raises(ConfigError, match="--key: '-4294967297' is out of range"):
        reaping_parse_key("-4294967297")


def test_reap_keeps_a_key_protected_as_minus_1(tmp_path):
    protected = make(Spec(key=0xFFFFFFFF)).ids[0]
    reaped = make(Spec(key=0x1234)).ids[0]
    cfg = tmp_path / "shmjanitor.toml"
    cfg.write_text("min_age = 0\ninclude_system = true\nprotect_keys = [-1]\n")
    cfg.chmod(0o600)
    r = cli("reap", "--config", str(cfg), "--state-dir", str(tmp_path / "s"), "--json")
    assert r.exit_code == 0, r.output
    actions = {x["id"]: x["action"] for x in json.loads(r.stdout)["results"]}
    assert actions == {protected: "kept", reaped: "removed"}
    assert set(rows()) == {protected}

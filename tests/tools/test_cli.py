"""The ``restate-redis kv`` and ``services`` commands, run as the real console script."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
import pytest
import redis

from restate_redis import RedisStateStore, WorkflowCompletedError
from tests.support.keys import state_fields
from tests.support.servers import Server, free_port

# One flavour is enough here: both are covered by test_admin.py, under the same calls.
pytestmark = pytest.mark.parametrize("server", ["valkey"], indirect=True)

SCRIPT = str(Path(sys.executable).with_name("restate-redis"))


Cli = Callable[..., "subprocess.CompletedProcess[str]"]


@pytest.fixture
def cli(server: Server, rc: redis.Redis, tmp_path: Path) -> Cli:
    """Run the console script against the test server; returns the CompletedProcess.

    Its temporary files (edited text that ``kv edit`` keeps) go to the test's tmp_path.
    """

    def run(*args: str, input: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("RESTATE_REDIS_")}
        full_env = {**inherited, "RESTATE_REDIS_URL": server.url, "TMPDIR": str(tmp_path), **env}
        return subprocess.run(
            [SCRIPT, *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=full_env,
            timeout=60,
        )

    return run


def seed(server: Server, service: str, key: str, **values: object) -> None:
    """Store values in-process (faster than the console script where it is not under test)."""

    async def write() -> None:
        async with RedisStateStore.from_url(server.url) as store, store.object(service, key) as s:
            for name, value in values.items():
                s.set(name, value)

    asyncio.run(write())


def state(rc: redis.Redis, service: str, key: str, namespace: str = "restate") -> dict[str, Any]:
    raw: dict[bytes, bytes] = rc.hgetall(f"{namespace}:{{{service}:{key}}}:state")  # type: ignore[assignment]
    return {k.decode(): msgpack.unpackb(v, raw=False) for k, v in state_fields(raw).items()}


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("restate-redis: error: ")
    return lines[0]


def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, (proc.returncode, proc.stdout, proc.stderr)
    return proc.stdout


def test_set_then_get_plain_and_table(cli: Cli, rc: redis.Redis) -> None:
    ok(cli("kv", "set", "Cart", "alice", "items", '["a", {"n": 2}]'))
    ok(cli("kv", "set", "Cart", "alice", "note", '"[bold]<b>not markup</b>"'))
    assert state(rc, "Cart", "alice") == {
        "items": ["a", {"n": 2}],
        "note": "[bold]<b>not markup</b>",
    }
    plain = ok(cli("kv", "get", "Cart", "alice", "--plain"))
    assert json.loads(plain) == {"items": ["a", {"n": 2}], "note": "[bold]<b>not markup</b>"}
    assert plain.count("\n") == 1  # one JSON object and nothing else
    table = ok(cli("kv", "get", "Cart", "alice"))
    assert "Cart/alice: version 2" in table
    assert "[bold]<b>not markup</b>" in table and '"n": 2' in table


def test_set_with_a_ttl_and_get_shows_the_time_left(cli: Cli, rc: redis.Redis) -> None:
    assert "expires in 10m" in ok(cli("kv", "set", "Cart", "tia", "token", '"abc"', "--ttl", "10m"))
    ok(cli("kv", "set", "Cart", "tia", "plain", "1"))
    ok(cli("kv", "set", "Cart/tia", "day", "2", "--ttl", "1d2h"))
    left = rc.execute_command(
        "HPTTL", "restate:{Cart:tia}:state", "FIELDS", 3, "token", "plain", "day"
    )
    assert 590_000 < left[0] <= 600_000 and left[1] == -1
    assert 26 * 3600_000 - 10_000 < left[2] <= 26 * 3600_000
    table = ok(cli("kv", "get", "Cart", "tia"))
    assert "expires in" in table
    lines = {line.split("│")[1].strip(): line for line in table.splitlines() if line.count("│") > 3}
    assert "9m 5" in lines["token"] or "10m 0s" in lines["token"]
    assert "1d 1h 59m" in lines["day"] or "1d 2h 0m" in lines["day"]
    assert "m " not in lines["plain"].split("│")[4]  # no expiry of its own: an empty cell
    assert json.loads(ok(cli("kv", "get", "Cart", "tia", "--plain"))) == {
        "day": 2,
        "plain": 1,
        "token": "abc",
    }
    from restate_redis.tools.kv import parse_duration

    for text, seconds in [
        ("30s", 30),
        ("10m", 600),
        ("1h", 3600),
        ("2d", 172800),
        ("1h30m", 5400),
        ("1.5h", 5400),
        ("500ms", 0.5),
        ("90", 90),
        (" 2D ", 172800),
    ]:
        assert parse_duration(text).total_seconds() == seconds, text
    for bad in ("10x", "m", "-5s", "0s", ""):
        proc = cli("kv", "set", "Cart", "tia", "token", '"abc"', "--ttl", bad)
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "--ttl" in proc.stderr
    assert (
        "such as 30s, 10m, 1h, 2d or 1h30m"
        in cli("kv", "set", "C", "k", "n", "1", "--ttl", "10x").stderr
    )


def test_get_plain_of_an_object_without_state(cli: Cli, rc: redis.Redis) -> None:
    proc = cli("kv", "get", "Cart", "nobody", "--plain")
    assert (proc.returncode, proc.stdout) == (0, "{}\n")  # stdout: exactly one JSON object
    assert "nothing is stored for service 'Cart'" in proc.stderr
    ok(cli("kv", "set", "Cart", "emptied", "a", "1"))
    ok(cli("kv", "clear", "Cart/emptied"))
    assert ok(cli("kv", "get", "Cart", "emptied", "--plain")) == "{}\n"


def test_namespace_option_and_env(cli: Cli, rc: redis.Redis) -> None:
    ok(cli("kv", "set", "Cart", "x", "a", "1", "--namespace", "other"))
    assert state(rc, "Cart", "x", namespace="other") == {"a": 1}
    assert state(rc, "Cart", "x") == {}
    env_plain = ok(cli("kv", "get", "Cart", "x", "--plain", RESTATE_REDIS_NAMESPACE="other"))
    assert json.loads(env_plain) == {"a": 1}


def test_list_and_services(cli: Cli, rc: redis.Redis, server: Server) -> None:
    for key in ("apple", "apricot", "banana"):
        seed(server, "Fruit", key, n=1)
    seed(server, "Veg", "leek", n=1)

    async def workflow() -> None:
        async with (
            RedisStateStore.from_url(server.url) as store,
            store.workflow("Signup", "wf-1") as run,
        ):
            run.set("step", "mailed")

    asyncio.run(workflow())
    assert sorted(ok(cli("kv", "list", "Fruit", "--plain")).split()) == [
        "apple",
        "apricot",
        "banana",
    ]
    assert sorted(ok(cli("kv", "list", "Fruit", "--prefix", "ap", "--plain")).split()) == [
        "apple",
        "apricot",
    ]
    listed = ok(cli("kv", "list", "Signup"))
    assert listed.startswith("wf-1\tworkflow completed, state expires in 23h 59m")
    assert ok(cli("services", "--plain")).split() == ["Fruit", "Signup", "Veg"]
    table = ok(cli("services"))
    assert "Fruit" in table and "3" in table
    shown = ok(cli("kv", "get", "Signup", "wf-1"))
    assert "workflow completed, state expires in 23h 59m" in shown


def test_patch(cli: Cli, rc: redis.Redis, server: Server) -> None:
    seed(server, "Cart", "bob", items=["a"])
    seed(server, "Cart", "bob", gone=True)
    patch = '[{"op": "add", "path": "/items/-", "value": "b"}, {"op": "remove", "path": "/gone"}]'
    assert "version 3" in ok(cli("kv", "patch", "Cart", "bob", "--patch", patch))
    assert state(rc, "Cart", "bob") == {"items": ["a", "b"]}
    failing = '[{"op": "remove", "path": "/nothing"}]'
    assert "does not apply" in one_line_error(cli("kv", "patch", "Cart", "bob", "--patch", failing))
    assert "bad JSON for --patch" in one_line_error(
        cli("kv", "patch", "Cart", "bob", "--patch", "[{")
    )
    stale = cli("kv", "patch", "Cart", "bob", "--patch", "[]", "--expect-version", "1")
    assert "changed since it was read" in one_line_error(stale, code=3)
    assert state(rc, "Cart", "bob") == {"items": ["a", "b"]}


def editor(tmp_path: Path, body: str) -> str:
    """An $EDITOR: a Python script that gets the file path as sys.argv[1]."""
    script = tmp_path / "editor.py"
    script.write_text("import json, os, subprocess, sys\npath = sys.argv[1]\n" + body)
    return f"{sys.executable} {script}"


def test_edit_replaces_the_whole_state(
    cli: Cli, rc: redis.Redis, tmp_path: Path, server: Server
) -> None:
    seed(server, "Cart", "carol", a=1)
    seed(server, "Cart", "carol", b={"x": 1})
    body = """
doc = json.load(open(path))
assert doc == {"a": 1, "b": {"x": 1}}, doc
doc["a"] = 2
del doc["b"]
doc["c"] = "<script>"
json.dump(doc, open(path, "w"))
"""
    out = ok(cli("kv", "edit", "Cart", "carol", EDITOR=editor(tmp_path, body)))
    assert "version 3" in out
    assert state(rc, "Cart", "carol") == {"a": 2, "c": "<script>"}
    unchanged = ok(cli("kv", "edit", "Cart", "carol", EDITOR="true"))
    assert "no change" in unchanged
    bad = editor(tmp_path, "open(path, 'w').write('{not json')\n")
    assert "bad JSON" in one_line_error(cli("kv", "edit", "Cart", "carol", EDITOR=bad))
    array = editor(tmp_path, "open(path, 'w').write('[1]')\n")
    assert "must be a JSON object" in one_line_error(
        cli("kv", "edit", "Cart", "carol", EDITOR=array)
    )
    assert state(rc, "Cart", "carol") == {"a": 2, "c": "<script>"}


def test_edit_refuses_when_the_object_changed_meanwhile(
    cli: Cli, rc: redis.Redis, tmp_path: Path
) -> None:
    ok(cli("kv", "set", "Cart", "dave", "n", "1"))
    # while the editor is open, another writer changes the object
    body = f"""
subprocess.run([{SCRIPT!r}, "kv", "set", "Cart", "dave", "n", "100"], check=True)
json.dump({{"n": 2}}, open(path, "w"))
"""
    racing = editor(tmp_path, body)
    err = one_line_error(cli("kv", "edit", "Cart", "dave", EDITOR=racing), code=3)
    assert "changed since it was read" in err and "nothing was written" in err
    assert state(rc, "Cart", "dave") == {"n": 100}
    ok(cli("kv", "edit", "Cart", "dave", "--force", EDITOR=racing))
    assert state(rc, "Cart", "dave") == {"n": 2}


def test_clear_key_object_and_service(cli: Cli, rc: redis.Redis, server: Server) -> None:
    for key in ("k1", "k2", "k3"):
        seed(server, "Counter", key, n=1, m=2)
    seed(server, "Keep", "k1", n=1)
    ok(cli("kv", "clear", "Counter/k1", "m"))
    assert state(rc, "Counter", "k1") == {"n": 1}
    ok(cli("kv", "clear", "Counter/k1"))
    assert state(rc, "Counter", "k1") == {}
    refused = cli("kv", "clear", "Counter", input="n\n")  # k1 has no state left: not counted
    assert refused.returncode != 0 and "Clear the state of all 2 objects" in refused.stderr
    assert state(rc, "Counter", "k2") == {"n": 1, "m": 2}
    ok(cli("kv", "clear", "Counter", input="y\n"))
    assert state(rc, "Counter", "k2") == {} and state(rc, "Counter", "k3") == {}
    seed(server, "Counter", "k2", n=1)
    assert "cleared 1 object of service Counter" in ok(cli("kv", "clear", "Counter", "--yes"))
    assert state(rc, "Counter", "k2") == {}
    assert state(rc, "Keep", "k1") == {"n": 1}


def test_unknown_objects_and_state_keys(cli: Cli, rc: redis.Redis) -> None:
    for args in (
        ("kv", "clear", "Cart/nobody"),
        ("kv", "clear", "Cart/nobody", "a"),
        ("kv", "patch", "Cart", "nobody", "--patch", "[]"),
        ("kv", "edit", "Cart", "nobody"),
    ):
        assert "'Cart'/'nobody' does not exist" in one_line_error(cli(*args)), args
    ok(cli("kv", "set", "Cart", "erin", "a", "1"))
    assert "state key 'zz' does not exist" in one_line_error(cli("kv", "clear", "Cart/erin", "zz"))
    # refusing left no object behind (only the release signal of the lease, which expires)
    assert rc.exists("restate:{Cart:nobody}:state", "restate:{Cart:nobody}:meta") == 0


def test_bad_json_and_version_conflict(cli: Cli, rc: redis.Redis) -> None:
    assert "bad JSON for state key 'a'" in one_line_error(cli("kv", "set", "Cart", "f", "a", "{x"))
    assert rc.keys("*") == []
    ok(cli("kv", "set", "Cart", "f", "a", "1"))
    stale = cli("kv", "set", "Cart", "f", "a", "2", "--expect-version", "0")
    assert "at version 1, the edit expected version 0" in one_line_error(stale, code=3)
    assert one_line_error(cli("kv", "clear", "Cart/f", "--expect-version", "7"), code=3)
    assert state(rc, "Cart", "f") == {"a": 1}
    ok(cli("kv", "set", "Cart", "f", "a", "2", "--expect-version", "1"))
    assert state(rc, "Cart", "f") == {"a": 2}


def test_unreachable_redis_and_bad_urls_never_show_the_password(cli: Cli) -> None:
    dead = f"redis://admin:pw-s3cr3t@127.0.0.1:{free_port()}/0"
    for args in (("kv", "get", "Cart", "a"), ("services",), ("kv", "set", "C", "k", "n", "1")):
        err = one_line_error(cli(*args, "--url", dead))
        assert "pw-s3cr3t" not in err and "redis://admin:***@127.0.0.1" in err
    from_env = cli("kv", "list", "Cart", RESTATE_REDIS_URL=dead)
    assert "pw-s3cr3t" not in one_line_error(from_env)
    for url in ("not-a-url", "http://127.0.0.1:1/0", "redis//:pw-s3cr3t@host"):
        err = one_line_error(cli("kv", "get", "Cart", "a", "--url", url))
        assert "pw-s3cr3t" not in err and "URL" in err


def test_a_change_waits_for_a_running_handler_then_times_out(cli: Cli, rc: redis.Redis) -> None:
    ok(cli("kv", "set", "Cart", "busy", "n", "1"))
    rc.set("restate:{Cart:busy}:lease", "a-running-handler", px=60_000)
    err = one_line_error(cli("kv", "set", "Cart", "busy", "n", "2", "--acquire-timeout", "0.3"))
    assert "could not acquire the lease of 'Cart'/'busy'" in err
    assert state(rc, "Cart", "busy") == {"n": 1}
    rc.delete("restate:{Cart:busy}:lease")
    ok(cli("kv", "set", "Cart", "busy", "n", "2", "--acquire-timeout", "0.3"))
    assert state(rc, "Cart", "busy") == {"n": 2}


def test_bytes_undecodable_values_and_other_serdes(cli: Cli, rc: redis.Redis) -> None:
    ok(cli("kv", "set", "Cart", "kit", "blob", '{"$base64": "AAH/"}'))
    assert state(rc, "Cart", "kit") == {"blob": b"\x00\x01\xff"}
    rc.hset("restate:{Cart:kit}:state", "odd", b"\xc1")  # not msgpack
    shown = json.loads(ok(cli("kv", "get", "Cart", "kit", "--plain")))
    assert shown == {"blob": {"$base64": "AAH/"}, "odd": {"$raw": "wQ=="}}
    ok(cli("kv", "patch", "Cart", "kit", "--patch", '[{"op": "add", "path": "/n", "value": 1}]'))
    assert rc.hget("restate:{Cart:kit}:state", "odd") == b"\xc1"  # left exactly as it was
    ok(cli("kv", "set", "Cart", "js", "doc", '{"a": [1]}', "--serde", "json"))
    assert rc.hget("restate:{Cart:js}:state", "doc") == b'{"a":[1]}'
    as_json = ok(cli("kv", "get", "Cart", "js", "--plain", RESTATE_REDIS_SERDE="json"))
    assert json.loads(as_json) == {"doc": {"a": [1]}}


# -- edits keep what the user did not change ----------------------------------------------------

FOREIGN = {
    "f32": msgpack.packb(1.5, use_single_float=True),
    "wide_int": b"\xcd\x00\x05",
    "key_order": msgpack.packb({"b": 1, "a": 2}),
    "str8": b"\xd9\x02hi",
    "float_one": msgpack.packb(1.0),
}


def raw(rc: redis.Redis, service: str, key: str) -> dict[str, bytes]:
    got: dict[bytes, bytes] = rc.hgetall(f"restate:{{{service}:{key}}}:state")  # type: ignore[assignment]
    return {k.decode(): v for k, v in got.items()}


def test_edit_patch_and_set_leave_other_values_byte_for_byte(
    cli: Cli, rc: redis.Redis, tmp_path: Path, server: Server
) -> None:
    seed(server, "Cart", "foreign", n=1)
    rc.hset("restate:{Cart:foreign}:state", mapping=FOREIGN)  # type: ignore[arg-type]
    body = """
doc = json.load(open(path))
assert doc["float_one"] == 1.0 and isinstance(doc["float_one"], float), doc
doc["n"] = 2
json.dump(doc, open(path, "w"))
"""
    ok(cli("kv", "edit", "Cart", "foreign", EDITOR=editor(tmp_path, body)))
    assert raw(rc, "Cart", "foreign") == {**FOREIGN, "n": msgpack.packb(2)}
    ok(
        cli(
            "kv", "patch", "Cart", "foreign", "--patch", '[{"op": "add", "path": "/m", "value": 1}]'
        )
    )
    ok(cli("kv", "set", "Cart", "foreign", "n", "3"))
    ok(cli("kv", "set", "Cart", "foreign", "f32", "1.5"))  # the value it holds: left alone
    want = {**FOREIGN, "n": msgpack.packb(3), "m": msgpack.packb(1)}
    assert raw(rc, "Cart", "foreign") == want
    # an edit saved as it was shown is no change at all
    assert "no change" in ok(cli("kv", "edit", "Cart", "foreign", EDITOR=editor(tmp_path, "")))
    resaved = "doc = json.load(open(path))\njson.dump(doc, open(path, 'w'))\n"
    assert "no change" in ok(cli("kv", "edit", "Cart", "foreign", EDITOR=editor(tmp_path, resaved)))
    assert raw(rc, "Cart", "foreign") == want


@pytest.mark.parametrize("new", ["1.0", "true", "1e0"])
def test_edit_to_an_equal_value_of_another_type_is_a_change(
    cli: Cli, rc: redis.Redis, tmp_path: Path, new: str
) -> None:
    ok(cli("kv", "set", "Cart", "types", "n", "1"))
    body = f"open(path, 'w').write('{{\"n\": {new}}}')\n"
    assert "replaced" in ok(cli("kv", "edit", "Cart", "types", EDITOR=editor(tmp_path, body)))
    assert rc.hget("restate:{Cart:types}:state", "n") == msgpack.packb(json.loads(new))


def test_marker_shaped_values_round_trip_through_the_cli(
    cli: Cli, rc: redis.Redis, tmp_path: Path, server: Server
) -> None:
    app_value = {"$base64": "aGk=", "deep": [{"$raw": "x"}]}
    seed(server, "Cart", "marks", v=app_value, n=1)
    shown = json.loads(ok(cli("kv", "get", "Cart", "marks", "--plain")))
    assert shown["v"] == {"$$base64": "aGk=", "deep": [{"$$raw": "x"}]}
    body = "doc = json.load(open(path))\ndoc['n'] = 2\njson.dump(doc, open(path, 'w'))\n"
    ok(cli("kv", "edit", "Cart", "marks", EDITOR=editor(tmp_path, body)))
    ok(cli("kv", "set", "Cart", "marks", "copy", json.dumps(shown["v"])))
    ok(cli("kv", "set", "Cart", "marks", "blob", '{"$base64": "aGk="}'))
    assert state(rc, "Cart", "marks") == {"v": app_value, "copy": app_value, "n": 2, "blob": b"hi"}
    misused = cli("kv", "set", "Cart", "marks", "bad", '{"$base64": "aGk=", "x": 1}')
    assert '"$$base64"' in one_line_error(misused)


NON_FINITE = ["NaN", "Infinity", "-Infinity", "1e999", "[1, -1e400]", '{"a": {"b": NaN}}']


@pytest.mark.parametrize("text", NON_FINITE)
def test_numbers_json_cannot_carry_are_refused(
    cli: Cli, rc: redis.Redis, tmp_path: Path, text: str
) -> None:
    ok(cli("kv", "set", "Cart", "nums", "n", "1"))
    assert "not a finite number" in one_line_error(
        cli("kv", "set", "--", "Cart", "nums", "v", text)
    )
    patch = f'[{{"op": "add", "path": "/v", "value": {text}}}]'
    assert "not a finite number" in one_line_error(
        cli("kv", "patch", "Cart", "nums", "--patch", patch)
    )
    doc = f'{{"n": 1,\n "v": {text}}}'
    bad = editor(tmp_path, f"open(path, 'w').write({doc!r})\n")
    err = one_line_error(cli("kv", "edit", "Cart", "nums", EDITOR=bad))
    assert "not a finite number" in err and "line 2 column" in err
    assert state(rc, "Cart", "nums") == {"n": 1}


@pytest.mark.parametrize("text", ["hi", "hello world", "it's", "None", "NaN", "-"])
def test_set_of_text_that_is_not_json_shows_how_to_quote_it(
    cli: Cli, rc: redis.Redis, text: str
) -> None:
    import shlex

    err = one_line_error(cli("kv", "set", "Cart", "quote", "name", text))
    assert "bad JSON for state key 'name'" in err and "JSON" in err
    assert shlex.quote(json.dumps(text)) in err
    assert rc.exists("restate:{Cart:quote}:state", "restate:{Cart:quote}:meta") == 0
    ok(cli("kv", "set", "Cart", "quote", "name", json.dumps(text)))
    assert state(rc, "Cart", "quote") == {"name": text}


# -- kv edit keeps the user's text ---------------------------------------------------------------


def kept_file(err: str) -> Path:
    """The file an error message says the edited text is kept in."""
    marker = "kept in "
    assert marker in err, err
    path = Path(err.split(marker, 1)[1].split()[0])
    assert path.is_file(), err
    assert path.name.startswith("restate-redis-") and path.suffix == ".json"
    return path


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ('{"n": 2,\n  "m": oops}', "line 2 column 8"),
        ('{"n": 2,\n}', "line 2 column 1"),
        ("\n  [1, 2]", "line 2 column 3"),
        ('{"n":\n Infinity}', "line 2 column 2"),
    ],
)
def test_edit_without_a_terminal_keeps_unusable_text_in_a_file(
    cli: Cli, rc: redis.Redis, tmp_path: Path, text: str, where: str
) -> None:
    ok(cli("kv", "set", "Cart", "keep", "n", "1"))
    bad = editor(tmp_path, f"open(path, 'w').write({text!r})\n")
    err = one_line_error(cli("kv", "edit", "Cart", "keep", EDITOR=bad))
    assert where in err
    path = kept_file(err)
    try:
        assert path.read_text() == text
    finally:
        path.unlink()
    assert state(rc, "Cart", "keep") == {"n": 1}


def test_edit_keeps_the_text_when_the_object_changed_meanwhile(
    cli: Cli, rc: redis.Redis, tmp_path: Path
) -> None:
    ok(cli("kv", "set", "Cart", "race", "n", "1"))
    body = f"""
subprocess.run([{SCRIPT!r}, "kv", "set", "Cart", "race", "n", "100"], check=True)
open(path, "w").write('{{"n": 2}}')
"""
    err = one_line_error(cli("kv", "edit", "Cart", "race", EDITOR=editor(tmp_path, body)), code=3)
    path = kept_file(err)
    try:
        assert path.read_text() == '{"n": 2}'
    finally:
        path.unlink()
    assert state(rc, "Cart", "race") == {"n": 100}


def run_in_terminal(args: list[str], env: dict[str, str], answers: str) -> tuple[int, str]:
    """Run the console script with a pseudo-terminal as stdin; ``answers`` are typed into it
    once it asks. Returns the exit code and everything it wrote to the terminal."""
    import pty
    import select

    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [SCRIPT, *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    seen = b""
    pending = answers.encode()
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            assert ready, f"no output from {args}: {seen!r}"
            try:
                chunk = os.read(master, 4096)
            except OSError:  # the script exited and closed the terminal
                break
            if not chunk:
                break
            seen += chunk
            if pending and seen.rstrip().endswith(b"]:"):  # click.confirm's "[Y/n]:"
                line, _, pending = pending.partition(b"\n")
                os.write(master, line + b"\n")
                seen += b"\n"
        return proc.wait(timeout=60), seen.decode(errors="replace")
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_edit_offers_to_reopen_the_editor_on_the_same_text(
    server: Server, rc: redis.Redis, tmp_path: Path
) -> None:
    seed(server, "Cart", "again", n=1)
    calls = tmp_path / "calls"
    body = f"""
calls = {str(calls)!r}
n = len(open(calls).read()) if os.path.exists(calls) else 0
open(calls, "a").write("x")
if n == 0:
    open(path, "w").write('{{"n": 2, oops}}')
else:
    assert open(path).read().rstrip() == '{{"n": 2, oops}}', open(path).read()
    open(path, "w").write('{{"n": 2}}')
"""
    env = {
        **os.environ,
        "RESTATE_REDIS_URL": server.url,
        "EDITOR": editor(tmp_path, body),
        "TMPDIR": str(tmp_path),
    }
    code, out = run_in_terminal(["kv", "edit", "Cart", "again"], env, "y\n")
    assert code == 0, out
    assert "line 1 column 10" in out and "Re-open the editor" in out
    assert calls.read_text() == "xx"
    assert state(rc, "Cart", "again") == {"n": 2}
    # declining keeps the text in a file
    calls.unlink()
    code, out = run_in_terminal(["kv", "edit", "Cart", "again"], env, "n\n")
    assert code == 1, out
    path = kept_file(" ".join(out.split()))
    try:
        assert path.read_text() == '{"n": 2, oops}'
    finally:
        path.unlink()
    assert state(rc, "Cart", "again") == {"n": 2}


def test_set_takes_negative_numbers_as_the_value(cli: Cli, rc: redis.Redis) -> None:
    ok(cli("kv", "set", "Cart", "neg", "n", "-1"))
    ok(cli("kv", "set", "Cart", "neg", "f", "-2.5", "--expect-version", "1"))
    assert state(rc, "Cart", "neg") == {"n": -1, "f": -2.5}


# -- stray data, empty objects, terminal safety, typos, addressing ------------------------------


def stray_keys(rc: redis.Redis) -> list[str]:
    """Keys in the namespace that restate-redis did not write, one of each kind."""
    rc.hset(b"restate:{Cart:%FF}:meta", "v", "1")  # percent-encodes invalid UTF-8
    rc.hset(b"restate:{Cart:%ZZ}:state", "a", b"\x01")  # not percent-encoding at all
    rc.hset(b"restate:{Cart:\xff}:meta", "v", "1")  # the key name itself is not UTF-8
    rc.set("restate:{Cart:carl}:meta", "a string, not a hash")
    rc.hset("restate:{Cart:carl}:state", "a", b"\x01")
    rc.hset("restate:{Cart:dan}:state", "a", b"\x01")  # state without meta
    rc.hset("restate:{Cart:eve}:meta", "v", "seven")  # a version that is not a number
    rc.hset("restate:{Cart:eve}:state", "a", b"\x01")
    return ["%FF", "%ZZ", "carl", "dan", "eve"]


def test_stray_keys_are_skipped_counted_and_reported_once(
    cli: Cli, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "alice", n=1)
    seed(server, "Cart", "bob", n=2)
    seed(server, "Veg", "leek", n=3)
    names = stray_keys(rc)

    def skipped_line(proc: subprocess.CompletedProcess[str]) -> str:
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
        assert "skipped 6 keys that restate-redis did not write" in lines[0]
        assert any(name in lines[0] for name in names)
        return lines[0]

    listed = cli("services", "--plain")
    skipped_line(listed)
    assert listed.stdout.split() == ["Cart", "Veg"]
    table = cli("services")
    skipped_line(table)
    assert "Cart" in table.stdout and "2" in table.stdout
    objects = cli("kv", "list", "Cart", "--plain")
    skipped_line(objects)
    assert sorted(objects.stdout.split()) == ["alice", "bob"]
    assert json.loads(ok(cli("kv", "get", "Cart", "alice", "--plain"))) == {"n": 1}
    cleared = cli("kv", "clear", "Cart", "--yes")
    skipped_line(cleared)
    assert "cleared 2 objects of service Cart" in cleared.stdout
    assert state(rc, "Cart", "alice") == {} and state(rc, "Veg", "leek") == {"n": 3}
    # a stray object itself: a clear one-line error, not a traceback
    assert "'Cart'/'eve'" in one_line_error(cli("kv", "get", "Cart", "eve"))
    one_line_error(cli("kv", "get", "Cart", "carl"))


def test_objects_without_state_are_not_listed(cli: Cli, rc: redis.Redis, server: Server) -> None:
    seed(server, "Cart", "a", n=1)
    seed(server, "Cart", "b", n=1)
    seed(server, "Cart", "c", n=1)

    async def handlers() -> None:
        async with RedisStateStore.from_url(server.url) as store:
            async with store.object("Cart", "a") as s:
                s.clear_all()
            async with store.workflow("Signup", "wf-empty"):
                pass  # a workflow with no state is still listed: it has a status

    asyncio.run(handlers())
    ok(cli("kv", "clear", "Cart", "b"))
    assert ok(cli("kv", "list", "Cart", "--plain")).split() == ["c"]
    assert ok(cli("services", "--plain")).split() == ["Cart", "Signup"]
    assert "1" in ok(cli("services")).split("Cart")[1].splitlines()[0]
    assert ok(cli("kv", "list", "Signup", "--plain")).split() == ["wf-empty"]
    ok(cli("kv", "clear", "Cart/c"))
    assert ok(cli("services", "--plain")).split() == ["Signup"]


# NUL cannot be passed in argv, so the names on the command line have none
HOSTILE = "a\x1b[31m\x07\r\n\t\x7f\x85\u202e\u2066\u200fz"
RAW = ["\x1b", "\x07", "\r", "\x00", "\x7f", "\x85", "\u202e", "\u2066", "\u200f"]
NUL_VALUE = "v\x00\x9b"


def test_control_characters_are_escaped_everywhere(
    cli: Cli, rc: redis.Redis, server: Server
) -> None:
    seed(
        server,
        "Svc" + HOSTILE,
        "key" + HOSTILE,
        **{"name" + HOSTILE: "value" + HOSTILE, "nul\x00": NUL_VALUE},
    )

    def clean(text: str) -> str:
        for char in RAW:
            assert char not in text, (char, text)
        return text

    escaped = "a\\x1b[31m\\x07\\r\\n\\t\\x7f\\x85\\u202e\\u2066\\u200fz"
    services_plain = clean(ok(cli("services", "--plain")))
    assert services_plain == f"Svc{escaped}\n"
    clean(ok(cli("services")))
    service = "Svc" + HOSTILE
    assert clean(ok(cli("kv", "list", service))) == f"key{escaped}\n"
    table = clean(ok(cli("kv", "get", service, "key" + HOSTILE, COLUMNS="400")))
    assert f"name{escaped}" in table and f"Svc{escaped}/key{escaped}" in table
    assert "nul\\x00" in table
    plain = clean(ok(cli("kv", "get", service, "key" + HOSTILE, "--plain")))
    # still valid JSON, the same data
    assert json.loads(plain) == {"name" + HOSTILE: "value" + HOSTILE, "nul\x00": NUL_VALUE}
    err = one_line_error(cli("kv", "clear", service, "nobody" + HOSTILE))
    clean(err)
    assert "nobody" in err
    done = clean(ok(cli("kv", "set", service, "key" + HOSTILE, "n" + HOSTILE, "1")))
    assert f"n{escaped}" in done


def test_a_typo_in_the_service_name_gets_suggestions(
    cli: Cli, rc: redis.Redis, server: Server
) -> None:
    seed(server, "Cart", "alice", n=1)
    seed(server, "Checkout", "x", n=1)
    for args in (("kv", "get", "Crat", "alice"), ("kv", "list", "Crat"), ("kv", "list", "cart")):
        proc = cli(*args)
        assert proc.returncode == 0, proc.stderr
        assert f"nothing is stored for service '{args[2]}'" in proc.stderr
        assert "did you mean Cart" in proc.stderr
        assert f"127.0.0.1:{server.port}" in proc.stderr
    assert "(no state stored)" in cli("kv", "get", "Crat", "alice").stdout
    # a known service with an unknown object: no suggestion
    known = cli("kv", "get", "Cart", "nobody")
    assert known.returncode == 0 and "did you mean" not in known.stderr


def test_one_addressing_form_for_every_command(cli: Cli, rc: redis.Redis, tmp_path: Path) -> None:
    ok(cli("kv", "set", "Cart/alice", "n", "1"))
    ok(cli("kv", "set", "Cart", "alice", "m", "2"))
    ok(cli("kv", "set", "Cart", "a/b", "m", "3"))  # a slash inside the key in the two-word form
    assert state(rc, "Cart", "alice") == {"n": 1, "m": 2}
    assert json.loads(ok(cli("kv", "get", "Cart/alice", "--plain"))) == {"n": 1, "m": 2}
    assert json.loads(ok(cli("kv", "get", "Cart/a/b", "--plain"))) == {"m": 3}
    assert "1 key" in ok(cli("kv", "get", "Cart", "a/b"))
    assert "2 keys" in ok(cli("kv", "get", "Cart", "alice"))
    patch = '[{"op": "add", "path": "/p", "value": 0}]'
    ok(cli("kv", "patch", "Cart/alice", "--patch", patch))
    ok(cli("kv", "patch", "Cart", "alice", "--patch", patch))
    ok(cli("kv", "edit", "Cart/alice", EDITOR="true"))
    ok(cli("kv", "clear", "Cart", "alice", "n"))
    assert state(rc, "Cart", "alice") == {"m": 2, "p": 0}
    ok(cli("kv", "clear", "Cart/alice", "m"))
    assert state(rc, "Cart", "alice") == {"p": 0}
    assert "cleared Cart/alice" in ok(cli("kv", "clear", "Cart", "alice"))
    assert state(rc, "Cart", "alice") == {}
    for args in (
        ("kv", "set", "Cart", "alice", "n"),
        ("kv", "set", "Cart/alice", "n", "1", "2"),
        ("kv", "get", "Cart"),
        ("kv", "get", "Cart", "alice", "extra"),
        ("kv", "clear", "Cart", "alice", "n", "extra"),
    ):
        proc = cli(*args)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, (args, proc.stderr)
        assert "SERVICE KEY" in proc.stderr or "SERVICE/KEY" in proc.stderr
    assert state(rc, "Cart", "a%2Fb") == {"m": 3}
    assert "cleared 1 object of service Cart" in ok(cli("kv", "clear", "Cart", "--yes"))


def test_every_error_is_one_line_and_secrets_never_show(cli: Cli, server: Server) -> None:
    port = free_port()
    for url in (
        f"redis+cluster://127.0.0.1:{port}",
        f"redis+cluster://u:pw-s3cr3t@127.0.0.1:{port}",
    ):
        err = one_line_error(cli("services", "--url", url))
        assert "pw-s3cr3t" not in err and "127.0.0.1" in err
        one_line_error(cli("kv", "get", "Cart", "a", "--url", url))
    for url in (
        f"redis://127.0.0.1:{port}/0?password=pw-s3cr3t",
        f"redis://127.0.0.1:{port}/0?socket_timeout=2&password=pw-s3cr3t",
        f"redis+sentinel://127.0.0.1:{port}/m?sentinel_password=pw-s3cr3t",
        f"redis+sentinel://127.0.0.1:{port}/m?sentinel_password=pw-s3cr3t&colour=red",
        f"redis://:pw-s3cr3t@127.0.0.1:{port}/notadb",
        "redis+cluster://:pw-s3cr3t@h:99999",
    ):
        err = one_line_error(cli("kv", "get", "Cart", "a", "--url", url))
        assert "pw-s3cr3t" not in err, err
    err = one_line_error(
        cli("kv", "get", "Cart", "a", "--url", f"{server.url.rsplit('/', 1)[0]}/notadb")
    )
    assert "'/notadb' is not a database number" in err
    help_text = ok(cli("kv", "--help"))
    for code in ("0", "1", "2", "3", "4"):
        assert f"  {code}  " in help_text


def test_purge_lets_a_completed_workflow_run_again(
    cli: Cli, rc: redis.Redis, server: Server
) -> None:
    async def run_workflow() -> None:
        store = RedisStateStore.from_url(server.url)
        try:
            async with store.workflow("Signup", "wf-1") as ctx:
                ctx.set("email", "a@example.com")
        finally:
            await store.aclose()

    asyncio.run(run_workflow())
    with pytest.raises(WorkflowCompletedError, match="kv purge Signup wf-1"):
        asyncio.run(run_workflow())
    assert ok(cli("kv", "purge", "Signup", "wf-1")).strip() == "purged Signup/wf-1"
    assert rc.keys("restate:{Signup:wf-1}:*") == [b"restate:{Signup:wf-1}:wake"]
    asyncio.run(run_workflow())  # runs again
    assert rc.hget("restate:{Signup:wf-1}:meta", "wf") == b"completed"
    assert ok(cli("kv", "purge", "Signup/wf-1")).strip() == "purged Signup/wf-1"
    assert "nothing purged" in ok(cli("kv", "purge", "Signup", "wf-1"))
    assert cli("kv", "purge", "Signup").returncode == 2

"""Whose jobs a client may see and touch, and how fast a revoked key loses access: real
key-protected servers, real sockets, one connection per workstation key."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cvgen.protocol import JobSpec, ServerError
from cvgen.protocol.client import Client, Done
from cvgen.protocol.errors import AuthenticationFailed
from cvgen.protocol.images import Image
from cvgen.server.auth import generate_keys
from cvgen.server.io.exr import read_exr

from support import ServerProcess, make_shot


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cvgen.server.cli", *args], capture_output=True, text=True,
                          timeout=60)


def connect(server: ServerProcess, keys: Path, name: str, timeout: float = 30) -> Client:
    return Client(server.endpoint, timeout, server_key=keys / "server.key",
                  client_key=keys / "clients" / f"{name}.key_secret")


def inline_shot(folder: Path) -> dict[str, dict[int, Image]]:
    shot = make_shot(folder, range(1, 3), size=(8, 8))
    return {role: {f: read_exr(template.replace("####", f"{f:04d}")) for f in (1, 2)}
            for role, template in shot.items()}


def render(client: Client, spec: JobSpec, inline: dict | None = None) -> Done:
    done = list(client.submit(spec, inline=inline))[-1]
    assert isinstance(done, Done), done
    return done


def refused(call, code: str, words: str) -> ServerError:
    with pytest.raises(ServerError, match=words) as err:
        call()
    assert err.value.code == code
    return err.value


# -- isolation -------------------------------------------------------------------------------


def write_old_job(jobs: Path, job_id: str) -> None:
    """A job folder as servers before job owners wrote it: no owner recorded."""
    folder = jobs / job_id
    folder.mkdir(parents=True)
    (folder / "spec.json").write_text(json.dumps(JobSpec("colormatch", (1, 2), job_id=job_id).to_dict()))
    (folder / "state.json").write_text(json.dumps({"state": "done", "time": 1.0, "created": 1.0}))


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One network server, three workstations: alice and bob, and boss, the admin. Its input
    root holds the jobs folder, which must not make other clients' jobs readable."""
    base = tmp_path_factory.mktemp("access")
    keys = base / "keys"
    generate_keys(keys, ["alice", "bob", "boss"])
    write_old_job(base / "jobs", "old-job")
    (base / "in").mkdir()
    server = ServerProcess(base / "jobs", "--keys", str(keys), "--admin", "boss", "--input-root", str(base),
                           bind="tcp://0.0.0.0:*").start()
    frames = inline_shot(base / "shot")
    with connect(server, keys, "alice") as alice:
        done = render(alice, JobSpec("colormatch", (1, 2), job_id="alice-job"), frames)
    yield server, keys, done, frames, base
    assert server.stop() == 0


def test_a_client_sees_lists_and_touches_only_its_own_jobs(shared):
    server, keys, _, frames, _ = shared
    alice_job = JobSpec("colormatch", (1, 2), job_id="alice-job")
    with connect(server, keys, "bob") as bob:
        nobody = refused(lambda: bob.status("no-such-job"), "not_found", "no job")
        seen = refused(lambda: bob.status("alice-job"), "not_found", "no job")
        assert str(seen) == str(nobody).replace("no-such-job", "alice-job")
        refused(lambda: bob.cancel("alice-job"), "not_found", "no job")
        refused(lambda: list(bob.submit(alice_job, frames)), "not_found", "no job")
        refused(lambda: bob.status("old-job"), "not_found", "no job")
        assert bob.jobs() == []
        assert "alice-job" not in bob.status()["running"]
    with connect(server, keys, "alice") as alice:
        assert [j["job_id"] for j in alice.jobs()] == ["alice-job"]
        assert alice.status("alice-job")["state"] == "done"
        assert alice.cancel("alice-job")["state"] == "done"
        assert isinstance(list(alice.submit(alice_job, frames))[-1], Done)
        refused(lambda: alice.status("old-job"), "not_found", "no job")


def test_an_admin_sees_and_touches_every_job(shared):
    server, keys, _, frames, _ = shared
    with connect(server, keys, "boss") as boss:
        assert {j["job_id"] for j in boss.jobs()} == {"old-job", "alice-job"}
        assert boss.status("alice-job")["state"] == "done"
        assert boss.status("old-job")["state"] == "done"
        assert boss.cancel("alice-job")["state"] == "done"
        assert isinstance(list(boss.submit(JobSpec("colormatch", (1, 2), job_id="alice-job"), frames))[-1], Done)


def test_no_client_reads_another_clients_inputs_or_results_by_path(shared):
    server, keys, done, _, _ = shared
    job_folder = Path(done.frames[1]).parent.parent
    staged = {"plate": str(job_folder / "inputs" / "plate.####.exr"), "fg": str(job_folder / "inputs" / "fg.####.exr")}
    results = {**staged, "plate": str(Path(done.frames[1]).parent / "colormatch.####.exr")}
    jobs_root = {**staged, "plate": str(job_folder.parent / "plate.####.exr")}
    with connect(server, keys, "bob") as bob:
        for inputs in (staged, results, jobs_root):
            refused(lambda: list(bob.submit(JobSpec("colormatch", (1, 2), inputs))), "bad_request",
                    "in the jobs folder outside any job of yours")
    with connect(server, keys, "alice") as alice:
        chained = render(alice, JobSpec("colormatch", (1, 2), results, name="again"))
        assert sorted(chained.frames) == [1, 2]
        refused(lambda: list(alice.submit(JobSpec("colormatch", (1, 2), jobs_root))), "bad_request",
                "in the jobs folder outside any job of yours")
    with connect(server, keys, "boss") as boss:
        assert sorted(render(boss, JobSpec("colormatch", (1, 2), staged, name="audit")).frames) == [1, 2]


def test_a_symlink_into_another_clients_job_is_refused_as_the_frame_is_read(shared):
    server, keys, done, _, base = shared
    staged = Path(done.frames[1]).parent.parent / "inputs"
    mine = make_shot(base / "in" / "bob", range(1, 3), size=(8, 8))
    (base / "in" / "sneaky").mkdir()
    for f in (1, 2):
        (base / "in" / "sneaky" / f"plate.{f:04d}.exr").symlink_to(staged / f"plate.{f:04d}.exr")
    sneaky = {**mine, "plate": str(base / "in" / "sneaky" / "plate.####.exr")}
    (base / "in" / "linked").symlink_to(staged, target_is_directory=True)
    linked = {**mine, "plate": str(base / "in" / "linked" / "plate.####.exr")}
    with connect(server, keys, "bob") as bob:
        refused(lambda: list(bob.submit(JobSpec("colormatch", (1, 2), sneaky))), "bad_request",
                "leads into the jobs folder outside any job of yours")
        refused(lambda: list(bob.submit(JobSpec("colormatch", (1, 2), linked))), "bad_request",
                "in the jobs folder outside any job of yours")
        assert isinstance(list(bob.submit(JobSpec("colormatch", (1, 2), mine)))[-1], Done)
    with connect(server, keys, "alice") as alice:
        assert isinstance(list(alice.submit(JobSpec("colormatch", (1, 2), linked, name="linked")))[-1], Done)


def test_on_loopback_without_keys_every_job_is_the_local_users(server, tmp_path):
    shot = make_shot(tmp_path / "shot", range(1, 3), size=(8, 8))
    with Client(server.endpoint, 30) as client:
        first = render(client, JobSpec("colormatch", (1, 2), shot, job_id="first"))
        chained = {**shot, "plate": str(Path(first.frames[1]).parent / "colormatch.####.exr")}
        render(client, JobSpec("colormatch", (1, 2), chained, name="second", job_id="second"))
    with Client(server.endpoint, 30) as other:
        assert [j["job_id"] for j in other.jobs()] == ["first", "second"]
        assert other.status("first")["state"] == "done"
        assert other.cancel("second")["state"] == "done"


# -- revocation ------------------------------------------------------------------------------


@pytest.fixture
def two_clients(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, ["alice", "bob"])
    server = ServerProcess(tmp_path / "jobs", "--keys", str(keys), bind="tcp://0.0.0.0:*").start()
    yield server, keys
    if server.proc and server.proc.poll() is None:
        server.stop(signal.SIGKILL)


@pytest.mark.parametrize("how", ["keys revoke", "key file removed"])
def test_a_revoked_key_loses_its_open_connection_at_once(two_clients, tmp_path, how):
    server, keys = two_clients
    spec = JobSpec("colormatch", (1, 2), job_id="mine")
    with connect(server, keys, "alice") as alice, connect(server, keys, "bob") as bob:
        render(alice, spec, inline_shot(tmp_path / "shot"))
        assert bob.hello()["limits"]
        if how == "keys revoke":
            result = cli("keys", "revoke", str(keys), "alice")
            assert result.returncode == 0, result.stderr
            assert "revoked alice" in result.stdout and "at once" in result.stdout
        else:
            (keys / "authorized" / "alice.key").unlink()
        words = "no longer in this server's allow-list"
        refused(lambda: list(alice.submit(spec)), "bad_request", words)
        refused(lambda: alice.cancel("mine"), "bad_request", words)
        refused(lambda: alice.status(), "bad_request", words)
        refused(lambda: list(alice.submit(JobSpec("colormatch", (1, 2), job_id="new"),
                                          inline_shot(tmp_path / "again"))), "bad_request", words)
        assert bob.hello()["limits"]
    with connect(server, keys, "alice", timeout=2) as again:
        with pytest.raises(AuthenticationFailed):
            again.hello()
    assert not (tmp_path / "jobs" / "new").exists()


def test_keys_revoke_names_what_it_did_and_refuses_unknown_names(tmp_path):
    keys = tmp_path / "keys"
    generate_keys(keys, ["alice"])
    (keys / "authorized" / "alice-copy.key").write_bytes((keys / "authorized" / "alice.key").read_bytes())
    result = cli("keys", "revoke", str(keys), "alice")
    assert result.returncode == 0, result.stderr
    assert not any((keys / "authorized").glob("*.key"))
    assert "alice-copy.key" in result.stdout and (keys / "clients" / "alice.key").exists()
    again = cli("keys", "revoke", str(keys), "alice")
    assert again.returncode == 1 and "no client alice" in again.stderr and "Traceback" not in again.stderr
    bad = cli("keys", "revoke", str(keys), "../server")
    assert bad.returncode == 1 and "must be letters" in bad.stderr


def test_an_unreadable_key_file_fails_closed_and_is_named(two_clients):
    server, keys = two_clients
    with connect(server, keys, "bob", timeout=5) as bob:
        assert bob.hello()["limits"]
    (keys / "authorized" / "broken.key").write_text("this is not a key\n")
    (keys / "authorized" / "bob.key").unlink()
    server.proc.send_signal(signal.SIGHUP)
    with connect(server, keys, "alice", timeout=5) as alice:
        assert alice.hello()["limits"]
    time.sleep(0.2)
    with connect(server, keys, "bob", timeout=2) as bob:
        with pytest.raises(AuthenticationFailed):
            bob.hello()
    assert server.stop() == 0
    log = server.proc.stderr.read()
    assert "broken.key" in log
    assert "1 client key(s) admitted from now on" in log and "2 client key(s) admitted from now on" not in log


def test_an_admin_name_that_is_not_allow_listed_refuses_to_start(tmp_path):
    generate_keys(tmp_path / "keys", ["alice"])
    result = cli("serve", "--bind", "tcp://0.0.0.0:*", "--keys", str(tmp_path / "keys"), "--admin", "boss",
                 "--jobs-dir", str(tmp_path / "jobs"))
    assert result.returncode == 1 and "admin boss" in result.stderr and "Traceback" not in result.stderr
    result = cli("serve", "--admin", "alice", "--jobs-dir", str(tmp_path / "jobs"))
    assert result.returncode == 1 and "--admin needs --keys" in result.stderr

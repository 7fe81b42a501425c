"""The code_execution reward and its sandbox, one test per attack (docs/sandbox.md): a response that
loops, forks without bound, allocates without bound, writes outside its directory or opens a socket
gets reward 0 and leaves no process and no file behind. The tests run as root (as CI does): the
sandbox drops to its own uid; the tests never drop privileges themselves."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import uuid

import pytest
import torch

from alignops.api.rl import RewardOptions
from alignops.workloads.rl.rewards import REWARD_FUNCTIONS, RewardResources, ScoringBatch, extract_code
from alignops.workloads.sandbox import SANDBOX_UID, Limits, run_programs


@pytest.fixture
def sandbox_parent(monkeypatch):
    """The temp directory the sandbox makes its directories in: one of our own, searchable by the
    sandbox uid (pytest's tmp_path is not), emptied by the sandbox, checked and removed after."""
    parent = tempfile.mkdtemp(prefix="alignops-sandbox-test-")
    os.chmod(parent, 0o711)
    monkeypatch.setattr(tempfile, "tempdir", parent)
    yield parent
    shutil.rmtree(parent, ignore_errors=True)


def _leftovers(parent: str) -> list[int]:
    """Processes still running as the sandbox uid or inside the sandbox's directories."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}").st_uid == SANDBOX_UID or os.readlink(f"/proc/{entry}/cwd").startswith(parent):
                found.append(int(entry))
        except OSError:
            continue
    return found


def _reward(responses: list[str], answers: list[str | None], parent: str, **options) -> list[float]:
    fn = REWARD_FUNCTIONS.get("code_execution")(RewardOptions.model_validate(options), RewardResources())
    batch = ScoringBatch(prompts=["p"] * len(responses), responses=responses, answers=answers,
                         lengths=torch.ones(len(responses)), group_ids=torch.arange(len(responses)), max_new_tokens=64)
    rewards = fn(batch).tolist()
    assert _leftovers(parent) == [], "a sandboxed process outlived its run"
    assert os.listdir(parent) == [], "the sandbox left files behind"
    return rewards


def test_a_program_that_prints_the_answer_earns_the_reward(sandbox_parent):
    responses = ["print(12+34)", "print(12+35)", "```python\nprint(sum([12, 34]))\n```\nThat prints it.",
                 "open('own.txt', 'w').write('46')\nprint(open('own.txt').read())", "import sys\nsys.exit(3)"]
    # right output; wrong output; code in a fenced block; files in its own directory are fine; exit 3
    assert _reward(responses, ["46", "46", "46", "46", None], sandbox_parent) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert extract_code("text\n```py\nprint(1)\n```\nmore") == "print(1)\n"


def test_an_endless_loop_gets_0_and_is_killed(sandbox_parent):
    assert _reward(["while True:\n    pass\n"], ["46"], sandbox_parent, timeoutSeconds=1.0) == [0.0]


def test_a_fork_bomb_gets_0_and_leaves_no_process(sandbox_parent):
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    # a child that leaves its session and outlives the program is hunted down as well
    escape = "import os, time\nif os.fork() == 0:\n    os.setsid()\n    time.sleep(60)\nwhile True:\n    os.fork()\n"
    assert _reward([bomb, escape], ["46", "46"], sandbox_parent, timeoutSeconds=1.0) == [0.0, 0.0]


def test_unbounded_allocation_gets_0(sandbox_parent):
    grow = "chunks = []\nwhile True:\n    chunks.append(bytearray(1 << 24))\n"
    assert _reward([grow, "x = bytearray(1 << 34)\nprint(46)"], ["46", "46"], sandbox_parent, memoryMb=128) == [0.0, 0.0]


def test_writing_outside_its_directory_gets_0_and_leaves_no_file(sandbox_parent):
    open_dir = tempfile.mkdtemp(dir="/var/tmp")  # a directory anyone may write: only the sandbox stops it
    os.chmod(open_dir, 0o777)
    try:
        targets = [f"/tmp/alignops-escape-{uuid.uuid4().hex}", os.path.join(sandbox_parent, "escape.txt"), "../escape.txt",
                   os.path.join(open_dir, "escape.txt"), f"/dev/shm/alignops-escape-{uuid.uuid4().hex}"]
        programs = [f"open({t!r}, 'w').write('x')\nprint(46)" for t in targets]
        assert _reward(programs, ["46"] * len(programs), sandbox_parent) == [0.0] * len(programs)
        assert not any(os.path.exists(t) for t in targets if t.startswith("/")) and os.listdir(open_dir) == []
    finally:
        shutil.rmtree(open_dir)


def test_opening_a_socket_gets_0(sandbox_parent):
    with socket.socket() as listener, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        listener.settimeout(0.2)
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(0.2)
        tcp_port, udp_port = listener.getsockname()[1], udp.getsockname()[1]
        programs = [
            f"import socket\nsocket.create_connection(('127.0.0.1', {tcp_port}), timeout=1).sendall(b'x')\nprint(46)",
            f"import socket\ns = socket.socket()\ns.bind(('127.0.0.1', 0))\ns.listen()\nprint(46)",
            f"import socket\nsocket.socket(socket.AF_INET, socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', {udp_port}))\nprint(46)",
        ]
        outcomes, isolation = run_programs(programs, Limits())
        rewards = _reward(programs, ["46"] * 3, sandbox_parent)
        with pytest.raises(socket.timeout):
            listener.accept()
        if isolation.network_namespace:  # UDP is stopped by the namespace only (Landlock has no UDP rule)
            with pytest.raises(socket.timeout):
                udp.recvfrom(16)
            assert rewards == [0.0, 0.0, 0.0]
        else:
            assert rewards[:2] == [0.0, 0.0]
    assert not any(o.succeeded for o in outcomes[:2])


def test_the_isolation_this_platform_gives_is_reported():
    outcomes, isolation = run_programs(["import os\nprint(os.getuid())"], Limits())
    if os.geteuid() == 0:
        assert isolation.dropped_privileges and outcomes[0].stdout.strip() == str(SANDBOX_UID)
    assert all(isinstance(gap, str) for gap in isolation.missing())
    assert outcomes[0].clean

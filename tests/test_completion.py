"""Shell completion: the script `shmjanitor completion bash` prints, sourced in a real bash
and driven as bash drives it (COMP_WORDS, COMP_CWORD, then COMPREPLY); zsh and fish
through the same protocol their scripts speak."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent  # the venv's bin, where pip put `shmjanitor`
JANITOR = BIN / "shmjanitor"
pytestmark = pytest.mark.skipif(not JANITOR.exists(), reason="shmjanitor is not installed")


def env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}:{os.environ.get('PATH', '/usr/bin:/bin')}"}


@pytest.fixture(scope="module")
def bash_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("bash") is None:
        pytest.skip("needs bash")
    p = subprocess.run([JANITOR, "completion", "bash"], capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stderr
    path = tmp_path_factory.mktemp("completion") / "shmjanitor"
    path.write_text(p.stdout)
    return path


def bash_complete(script: Path, *words: str) -> list[str]:
    """What bash offers after `words` (the last one is the word being completed)."""
    quoted = " ".join("'" + w.replace("'", "'\\''") + "'" for w in words)
    program = (
        f"source {script}\n"
        "complete -p shmjanitor >/dev/null || exit 3\n"  # the script registered itself
        f"COMP_WORDS=({quoted})\n"
        f"COMP_CWORD={len(words) - 1}\n"
        "COMPREPLY=()\n"
        "_shmjanitor_completion shmjanitor\n"
        'printf "%s\\n" "${COMPREPLY[@]}"\n'
    )
    p = subprocess.run(
        ["bash", "--norc", "--noprofile", "-c", program],
        capture_output=True, text=True, env=env(), timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return [line for line in p.stdout.splitlines() if line]


@pytest.mark.parametrize(
    "words,offered",
    [
        (("shmjanitor", "lis"), ["list"]),
        (("shmjanitor", "l"), ["leaks", "limits", "list"]),
        (("shmjanitor", "list", "--st"), ["--state"]),
        (("shmjanitor", "list", "--state", "o"), ["orphan"]),
        # --state has no -s since issue 12: -s chooses semaphore sets, as in ipcs and lsipc.
        (
            ("shmjanitor", "list", "--state", ""),
            ["attached", "idle", "orphan", "unknown", "removing"],
        ),
        (("shmjanitor", "list", "--sort", "na"), ["name", "namepid", "nattch"]),
        (("shmjanitor", "list", "--sort", "ns"), ["ns", "nsems"]),
        (("shmjanitor", "reap", "--dry"), ["--dry-run"]),
        (("shmjanitor", "quarantine", "p"), ["purge"]),
        (("shmjanitor", "completion", ""), ["bash", "zsh", "fish"]),
    ],
)
def test_bash_completes_commands_options_and_states(bash_script, words, offered):
    assert sorted(bash_complete(bash_script, *words)) == sorted(offered)


def protocol(shell: str, words: str, cword: str) -> str:
    p = subprocess.run(
        [JANITOR],
        env={**env(), "_SHMJANITOR_COMPLETE": f"{shell}_complete", "COMP_WORDS": words,
             "COMP_CWORD": cword},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    return p.stdout


def test_zsh_script_and_answers():
    p = subprocess.run([JANITOR, "completion", "zsh"], capture_output=True, text=True, env=env())
    assert p.returncode == 0 and p.stdout.startswith("#compdef shmjanitor"), p.stdout
    assert "_SHMJANITOR_COMPLETE=zsh_complete" in p.stdout
    # zsh reads (type, value, description) triples
    out = protocol("zsh", "shmjanitor list --state o", "3").splitlines()
    assert out[:2] == ["plain", "orphan"]


def test_fish_script_and_answers():
    p = subprocess.run([JANITOR, "completion", "fish"], capture_output=True, text=True, env=env())
    assert p.returncode == 0, p.stderr
    assert "complete --no-files --command shmjanitor" in p.stdout
    assert "_SHMJANITOR_COMPLETE=fish_complete" in p.stdout

    # fish passes the command line so far and the current token; reads "type,value\thelp"
    def offered(words: str, token: str) -> list[str]:
        return [line.split("\t")[0] for line in protocol("fish", words, token).splitlines()]

    assert offered("shmjanitor list --st", "--st") == ["plain,--state"]
    assert offered("shmjanitor li", "li") == ["plain,list", "plain,limits"]


def test_a_bad_request_is_exit_2_and_help_stays_plain():
    p = subprocess.run(
        [JANITOR], env={**env(), "_SHMJANITOR_COMPLETE": "tcsh_complete"},
        capture_output=True, text=True,
    )  # fmt: skip
    assert p.returncode == 2 and "tcsh_complete" in p.stderr
    p = subprocess.run([JANITOR, "--help"], capture_output=True, text=True, env=env())
    assert "--install-completion" not in p.stdout and "--show-completion" not in p.stdout

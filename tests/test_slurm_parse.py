"""hypd/slurm's pure parts: the [hosts.NAME] table of a Slurm cluster, Slurm's commands as
hypd runs them and what their output says, and the tracker that turns one look at the
queue into lifecycle events. The outputs are as Slurm 22.05 prints them."""

from __future__ import annotations

import pytest

from hypd import lifecycle as lc
from hypd.inventory import InventoryError, format_inventory, parse_inventory, set_draining
from hypd.slurm.commands import (
    Job,
    parse_sacct,
    parse_sbatch,
    parse_sinfo,
    parse_squeue,
    sbatch_argv,
    squeue_argv,
)
from hypd.slurm.config import SlurmConfig
from hypd.slurm.tracker import MISSING_POLLS, Look, Tracker

CLUSTER = """
[hosts.cluster]
kind = "slurm"
login = "alice@login.cluster.edu"
partition = "gpu"
account = "lab42"
max_jobs = 32
sbatch = ["--time=02:00:00", "--constraint=a100"]
workdir = "~/hypd-runs"
"""


# ------------------------------------------------------------------ hosts.toml

def test_a_slurm_host_in_hosts_toml_round_trips() -> None:
    [c] = parse_inventory(CLUSTER)
    assert isinstance(c, SlurmConfig)
    assert (c.login, c.partition, c.account, c.max_jobs, c.sbatch, c.workdir) == (
        "alice@login.cluster.edu", "gpu", "lab42", 32, ("--time=02:00:00", "--constraint=a100"), "~/hypd-runs")
    assert not c.local and c.ssh_config().address == "login.cluster.edu" and c.ssh_config().user == "alice"
    assert parse_inventory(format_inventory([c])) == [c]
    [drained] = set_draining([c], "cluster")
    assert parse_inventory(format_inventory([drained]))[0].draining
    [local] = parse_inventory('[hosts.c]\nkind = "slurm"\n')
    assert local.local and local.max_jobs == 16


@pytest.mark.parametrize("line, words", [
    ('max_jobs = 0', "max_jobs must be a whole number >= 1"),
    ('sbatch = "--time=1:00:00"', "must be a list of sbatch options"),
    ('sbatch = ["--output=x"]', "must not set --output"),
    ('workdir = "runs"', "must be absolute or start with ~/"),
    ('login = "a@b@c"', 'must be "local" or [user@]address[:port]'),
    ('address = "10.0.0.5"', "unknown key for a Slurm host"),
    ('poll = "soon"', "must be a duration"),
])
def test_a_broken_slurm_host_is_refused_with_the_key_and_the_fix(line: str, words: str) -> None:
    with pytest.raises(InventoryError, match=None) as err:
        parse_inventory(f'[hosts.c]\nkind = "slurm"\n{line}\n')
    assert words in str(err.value) and "hosts.c." in str(err.value)
    with pytest.raises(InventoryError, match='kind must be "ssh"'):
        parse_inventory('[hosts.c]\nkind = "k8s"\naddress = "x"\n')


# ------------------------------------------------------------------ commands and output

def test_sbatch_line_carries_gpus_partition_account_and_the_users_options_last() -> None:
    [c] = parse_inventory(CLUSTER)
    argv = sbatch_argv(c, gpus=2, ctl_dir="/home/a/hypd-runs/runs/s/0001", log="/x/log", label="s:1",
                       script="/x/run.sh")
    assert argv[:2] == ["sbatch", "--parsable"]
    for arg in ("--gres=gpu:2", "--partition=gpu", "--account=lab42", "--job-name=hypd:s:1",
                "--comment=/home/a/hypd-runs/runs/s/0001", "--output=/x/log", "--open-mode=append"):
        assert arg in argv
    assert argv[-3:] == ["--time=02:00:00", "--constraint=a100", "/x/run.sh"]
    assert not any(a.startswith("--gres") for a in sbatch_argv(SlurmConfig("c"), gpus=0, ctl_dir="/c", log="/l",
                                                                 label="", script="/s"))
    assert "--states=all" in squeue_argv() and "--me" in squeue_argv()


def test_parse_sbatch() -> None:
    assert parse_sbatch("1234\n") == "1234"
    assert parse_sbatch("1234;cluster2\n") == "1234"
    assert parse_sbatch("sbatch: error: Batch job submission failed\n") is None


def test_parse_squeue() -> None:
    out = ("1|FAILED|NonZeroExitCode|hypdnode|(null)\n"
           "2|PENDING|Resources||/r/runs/s/0002\n"
           "3|RUNNING|None|hypdnode|/r/runs/s/0003 with | a bar\n"
           "squeue: warning: something\n"
           "6|NODE_FAIL|NodeDown|hypdnode|(null)\n")
    jobs = parse_squeue(out)
    assert [(j.id, j.phase, j.reason, j.comment) for j in jobs] == [
        ("1", "ended", "NonZeroExitCode", ""), ("2", "queued", "Resources", "/r/runs/s/0002"),
        ("3", "running", "", "/r/runs/s/0003 with | a bar"), ("6", "ended", "NodeDown", "")]
    assert Job("9", "COMPLETING").phase == "running"  # its resources are not free yet
    assert Job("9", "REQUEUED").phase == "queued"


def test_parse_sacct_and_sinfo() -> None:
    assert parse_sacct("7|COMPLETED|0:0\n8|CANCELLED by 0|0:15\n9|FAILED|3:0\n") == {
        "7": ("COMPLETED", 0), "8": ("CANCELLED", 0), "9": ("FAILED", 3)}
    assert parse_sacct("") == {}
    assert parse_sinfo("hypdnode|mixed|gpu:4|gpu:3\n") == 1
    assert parse_sinfo("a|idle|gpu:a100:4(S:0-1)|gpu:a100:0(IDX:N/A)\nb|down*|gpu:4|gpu:0\n"
                       "c|allocated|gpu:2,gpu:v100:2|gpu:2(IDX:0-1),gpu:v100:1(IDX:2)\n") == 4 + 1
    assert parse_sinfo("") is None


# ------------------------------------------------------------------ the tracker

CTL = "/r/runs/s/0001"


def look(tr: Tracker, *jobs: Job, exit_text: str | None = None, here: int = 0, there: int = 0,
         acct: dict[str, tuple[str, int | None]] | None = None) -> list[object]:
    return tr.look(Look(tuple(jobs), {1: exit_text}, {1: (here, there)}, acct))


def test_a_run_from_sbatch_to_its_end() -> None:
    tr = Tracker()
    tr.launching(1, CTL, "/home/log")
    assert look(tr, Job("41", "PENDING", "Priority", "", CTL)) == []  # sbatch has not answered yet
    assert tr.submitted(1, "41") == [lc.Launched(1, 41, "slurm")]
    assert look(tr, Job("41", "PENDING", "Priority", "", CTL)) == [lc.Queued(1, "Priority")]
    assert look(tr, Job("41", "PENDING", "Priority", "", CTL)) == []
    assert look(tr, Job("41", "RUNNING", "", "n1", CTL), here=10, there=10) == [lc.LogGrew(1, 10), lc.Queued(1, None)]
    # ended, but its log is not all here yet: its end waits
    assert look(tr, Job("41", "COMPLETED", "", "n1", CTL), exit_text="0 -\n", here=20, there=30) == [
        lc.LogGrew(1, 20)]
    assert look(tr, Job("41", "COMPLETED", "", "n1", CTL), exit_text="0 -\n", here=30, there=30) == [
        lc.LogGrew(1, 30), lc.Exited(1, 0, "-", 30, cause="COMPLETED"), lc.Cleaned(1)]
    assert look(tr, Job("41", "COMPLETED", "", "n1", CTL), exit_text="0 -\n", here=30, there=30) == []


def test_a_job_found_by_its_folder_when_sbatchs_answer_was_lost() -> None:
    tr = Tracker()
    t = tr.launching(1, CTL, "/home/log")
    t.submitting = False  # the connection broke under sbatch
    assert look(tr, Job("40", "COMPLETED", "", "", CTL), Job("41", "RUNNING", "", "n", CTL)) == [
        lc.Launched(1, 41, "slurm"), lc.Queued(1, None)]
    assert tr.job_of(1) == "41"
    tr.launching(2, "/r/runs/s/0002", "/home/log2").submitting = False
    out: list[object] = []
    for _ in range(MISSING_POLLS):
        out += tr.look(Look((), {2: None}, {2: (0, -1)}))
    assert out == [lc.LaunchFailed(2, "its job never reached the cluster's queue", reached_host=False)]


def test_an_adopted_job_is_alive_then_ends_as_slurm_says() -> None:
    tr = Tracker()
    tr.watch(1, CTL, "/home/log", "41")
    assert look(tr, Job("41", "RUNNING", "", "n", CTL)) == [lc.Alive(1, 41, "slurm"), lc.Queued(1, None)]
    assert look(tr, Job("41", "TIMEOUT", "TimeLimit", "n", CTL)) == [
        lc.Exited(1, None, None, 0, cause="TIMEOUT"), lc.Cleaned(1)]


def test_a_job_gone_from_the_queue_ends_by_its_exit_file_or_sacct_or_unknown() -> None:
    tr = Tracker()
    tr.watch(1, CTL, "/home/log", "41")
    assert look(tr, exit_text="3 train\n", here=5, there=5) == [
        lc.LogGrew(1, 5), lc.Exited(1, 3, "train", 5, cause=None), lc.Cleaned(1)]
    tr = Tracker()
    tr.watch(1, CTL, "/home/log", "42")
    assert look(tr) == [] and look(tr) == []
    assert tr.acct_wanted() == ["42"] and tr.acct_wanted() == []  # asked once
    assert look(tr, acct={"42": ("NODE_FAIL", 0)}) == [lc.Exited(1, 0, None, 0, cause="NODE_FAIL"), lc.Cleaned(1)]
    tr = Tracker()
    tr.watch(1, CTL, "/home/log", "43")
    look(tr), look(tr)
    tr.acct_wanted()
    assert look(tr, acct=None) == [lc.Exited(1, None, None, 0, cause=None), lc.Cleaned(1)]  # no accounting


def test_a_run_watched_anew_is_said_alive_again_when_its_job_is_seen() -> None:
    tr = Tracker()
    tr.watch(1, CTL, "/home/log", "41")
    assert look(tr, Job("41", "RUNNING", "", "n", CTL))[0] == lc.Alive(1, 41, "slurm")
    assert look(tr, Job("41", "RUNNING", "", "n", CTL)) == []
    tr.watch(1, CTL, "/home/log", "41")  # its login node came back: the daemon watches its runs anew
    assert look(tr, Job("41", "RUNNING", "", "n", CTL)) == [lc.Alive(1, 41, "slurm")]

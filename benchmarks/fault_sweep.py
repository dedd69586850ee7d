#!/usr/bin/env python3
"""Fault sweep: SIGKILL train.py at random points (checkpoint writes included), resume, compare bit for bit.

Each trial is a tiny real run (Fashion-MNIST, resnet10t, 4 epochs of 4 updates, one intra-op thread). It is
killed with SIGKILL, then rerun with ``--resume <run>/last.pth.tar`` where that file exists (else restarted
in the same folder), possibly killed again, until it finishes. After every kill every ``*.pth.tar`` in the
run folder must load with ``torch.load(weights_only=True)`` (timm's ``tmp.pth.tar`` excepted: the temporary
file the next save overwrites), and ``last.pth.tar`` must exist once a save completed and never go back an
epoch. At the end the final ``last.pth.tar`` (weights, optimizer, epoch, metric) must equal, ``torch.equal``
for every tensor, that of an uninterrupted run. A trial that fails any of these is *lost*.

Kill points:
  random       1 or 2 kills per trial, each at a moment uniform over the uninterrupted run's duration (startup
               and exit included; a resumed attempt's over the part it replays), placed after the same progress
               line as there (so the machine's load drifting does not push kills past the run's end)
  tmp-appears  the moment CheckpointSaver's tmp.pth.tar appears (polled every ms), at a random epoch's save
  save-window  that moment plus uniform(0, 2 x the longest tmp.pth.tar write measured): write, rename, links
  inject       just before CheckpointSaver._replace renames tmp.pth.tar over last.pth.tar (timm's own unlinks
               last.pth.tar a moment before): a window of microseconds no timer hits, so the process kills
               itself there (``--train --inject SAVE``)
  torchrun     2 CPU processes (gloo): one worker (rank 1 and 0 in turn) killed at a moment uniform over the
               uninterrupted 2-process run's from its first validation to its last progress line (placed the
               same way); torchrun and the other worker must be gone within BOUND_S; then torchrun --resume;
               compared with the uninterrupted 2-process run

The final model_best.pth.tar, the checkpoint-N files kept and summary.csv are compared too and reported apart
(*bookkeeping*): they do not change what a resumed run computes.

    nice python benchmarks/fault_sweep.py --out benchmarks/fault_sweep.md    # about 15 minutes on 2 cores
"""
import argparse
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / 'vt_timm' / 'configs' / 'quickstart_fashion_mnist.yaml'
EPOCHS = 4
RUN_FLAGS = ('--val-num-samples', '32', '--img-size', '64', '--warmup-epochs', '0',
             '-j', '0', '--model', 'resnet10t', '--log-interval', '1')
BATCH = 16  # on one process; under torchrun BATCH / processes each (the same global batch)
BOUND_S = 30.  # torchrun and the surviving worker must be gone this long after a worker's SIGKILL
POLL_S = 0.001
TMP = 'tmp.pth.tar'  # CheckpointSaver.save_checkpoint writes this, then renames it over last.pth.tar
PARTIAL = (TMP, 'recovery_tmp.pth.tar')  # temporary files a kill may leave half-written (the next save overwrites)


def environment() -> Dict[str, str]:
    """One intra-op thread for every run: float reductions, hence the bits, depend on the thread count."""
    return {**os.environ, 'OMP_NUM_THREADS': '1', 'MKL_NUM_THREADS': '1', 'PYTHONUNBUFFERED': '1'}


def train_command(data_dir: Path, output: Path, experiment: str, *extra: str, processes: int = 1,
                  inject: Optional[int] = None, epochs: int = EPOCHS, train_samples: int = 64) -> List[str]:
    """train.py, under torchrun for ``processes`` > 1, through ``--train`` (this file) to inject a kill at the
    ``inject``-th save."""
    launcher = [sys.executable, '-m', 'torch.distributed.run', '--standalone', f'--nproc_per_node={processes}'] \
        if processes > 1 else [sys.executable]
    if inject is not None:
        script = [str(Path(__file__).resolve()), '--train', '--inject', str(inject), '--']
    else:
        script = [str(ROOT / 'train.py')]
    return [*launcher, *script, '-c', str(QUICKSTART), '--data-dir', str(data_dir), '--output', str(output),
            '--experiment', experiment, *RUN_FLAGS, '--train-num-samples', str(train_samples),
            '--epochs', str(epochs), '-b', str(BATCH // processes), *extra]


def inject_kill(save: int) -> None:
    """SIGKILL this process in the ``save``-th ``os.replace(tmp.pth.tar, last.pth.tar)``, before the rename
    (timm's own ``CheckpointSaver._replace`` has unlinked last.pth.tar by then)."""
    real_replace, calls = os.replace, [0]

    def replace(src, dst, *args, **kwargs):
        if os.path.basename(dst) == 'last.pth.tar' and os.path.basename(src) == TMP:
            calls[0] += 1
            if calls[0] == save:
                os.kill(os.getpid(), signal.SIGKILL)
        return real_replace(src, dst, *args, **kwargs)

    os.replace = replace


def wrapped_train(argv: List[str]) -> None:
    """``fault_sweep.py --train --inject SAVE -- TRAIN_ARGS``: train.py's main with ``inject_kill(SAVE)``."""
    options, args = argv[:argv.index('--')], argv[argv.index('--') + 1:]
    sys.path.insert(0, str(ROOT))
    inject_kill(int(options[options.index('--inject') + 1]))
    from vt_timm.cli import train
    train.main(args)


def load(path: Path) -> Any:
    """A train.py checkpoint, read as the project reads them (weights_only; timm may pickle an argparse.Namespace)."""
    import torch
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location='cpu', weights_only=True)


def same(a: Any, b: Any) -> bool:
    """Nested dicts/lists/tuples of tensors and plain values equal, tensors bit for bit (torch.equal, same dtype)."""
    import torch
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype
                and a.shape == b.shape and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


BOOKKEEPING = ('saver', 'args')  # CheckpointSaver's history and timm's args: not training state


def state_differences(reference: Path, run: Path) -> List[str]:
    """What of the final last.pth.tar (all but the saver's bookkeeping) differs from the reference run's."""
    if not (run / 'last.pth.tar').is_file():
        return ['no last.pth.tar at the end']
    a, b = load(reference / 'last.pth.tar'), load(run / 'last.pth.tar')
    keys = (a.keys() | b.keys()) - set(BOOKKEEPING)
    return [f'final last.pth.tar[{k!r}] differs' for k in sorted(keys) if not same(a.get(k), b.get(k))]


def bookkeeping_differences(reference: Path, run: Path) -> List[str]:
    """model_best.pth.tar, the checkpoint-N files kept and summary.csv against the reference run's."""
    found = []
    best, reference_best = run / 'model_best.pth.tar', reference / 'model_best.pth.tar'
    if not best.is_file():
        found.append('no model_best.pth.tar')
    elif not same(load(reference_best)['state_dict'], load(best)['state_dict']):
        found.append(f'model_best.pth.tar is epoch {load(best)["epoch"]}, not {load(reference_best)["epoch"]}')
    kept = lambda d: ', '.join(sorted(p.name.split('.')[0] for p in d.glob('checkpoint-*.pth.tar')))  # noqa: E731
    if kept(reference) != kept(run):
        found.append(f'kept {kept(run)}, not {kept(reference)}')
    rows = lambda d: (d / 'summary.csv').read_text().splitlines()  # noqa: E731
    if rows(reference) != rows(run):
        epochs = [r.split(',')[0] for r in rows(run)[1:]]
        found.append(f'summary.csv rows for epochs {" ".join(epochs)}, not 0-{EPOCHS - 1} once each')
    return found


def other_file_problems(run: Path) -> List[str]:
    """args.yaml, summary.csv and curves.png, where they exist, read back after a kill."""
    import yaml

    from vt_timm.tools.plot import read_summary
    problems = []
    checks = (('args.yaml', lambda p: isinstance(yaml.safe_load(p.read_text()), dict)),
              ('summary.csv', lambda p: bool(read_summary(p))),
              ('curves.png', lambda p: p.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'))
    for name, check in checks:
        path = run / name
        try:
            ok = not path.exists() or check(path)
        except Exception:  # noqa: BLE001
            ok = False
        if not ok:
            problems.append(f'{name} unreadable')
    return problems


def folder_problems(run: Path, last_epoch: Optional[int]) -> Tuple[List[str], Optional[int], List[str]]:
    """After a kill: (problems, epoch of last.pth.tar, unreadable temporary files). Every checkpoint but timm's
    temporary ones must load; last.pth.tar must exist once a save completed (a checkpoint-N or model_best on
    disk, or a last.pth.tar before) and hold at least the newest epoch seen."""
    problems, partial, epochs = [], [], {}
    for path in sorted(run.glob('*.pth.tar')):
        try:
            epochs[path.name] = load(path)['epoch']
        except Exception as e:  # noqa: BLE001  any failure to load is the finding
            if path.name in PARTIAL:
                partial.append(path.name)
            else:
                problems.append(f'{path.name} unreadable ({type(e).__name__}: '
                                f'{str(e).splitlines()[0][:80] if str(e) else ""})')
    done = {n: e for n, e in epochs.items() if n not in PARTIAL}
    if 'last.pth.tar' not in epochs:
        if (done or last_epoch is not None) and not any(p.startswith('last.pth.tar') for p in problems):
            on_disk = ', '.join(f'{n} (epoch {e})' for n, e in sorted(epochs.items()))
            problems.append(f'last.pth.tar missing although a save had completed (on disk: {on_disk})')
        return problems, last_epoch, partial
    newest = max([*done.values(), -1 if last_epoch is None else last_epoch])
    if epochs['last.pth.tar'] < newest:
        problems.append(f'last.pth.tar went back to epoch {epochs["last.pth.tar"]} (epoch {newest} was saved)')
    return problems, epochs['last.pth.tar'], partial


WORKERS: List[int] = []  # torchrun workers seen (each in a session of its own): ended with their run


def launch(command: List[str], log: Path) -> subprocess.Popen:
    """Start a run in its own session (so that what is left of it can be ended as a group), output to ``log``."""
    with open(log, 'wb') as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environment(), cwd=ROOT,
                                start_new_session=True)


def end_group(proc: subprocess.Popen) -> None:
    """SIGKILL what is left of a run this script started: its process group and the torchrun workers seen."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    for pid in WORKERS:
        if alive(pid):
            os.kill(pid, signal.SIGKILL)
    WORKERS.clear()


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    try:
        return Path(f'/proc/{pid}/stat').read_text().rsplit(')', 1)[1].split()[0] != 'Z'
    except OSError:
        return False


def children(parent: int) -> List[int]:
    """Child processes of ``parent`` (from /proc: its threads' children lists, else every process's parent)."""
    try:
        return [int(pid) for task in Path(f'/proc/{parent}/task').iterdir()
                for pid in (task / 'children').read_text().split()]
    except OSError:
        pass
    found = []
    for entry in os.listdir('/proc'):
        if entry.isdigit():
            try:
                if int(Path(f'/proc/{entry}/stat').read_text().rsplit(')', 1)[1].split()[1]) == parent:
                    found.append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    return found


def local_rank(pid: int) -> Optional[int]:
    """LOCAL_RANK in the process's environment (torchrun sets it for each worker)."""
    try:
        env = Path(f'/proc/{pid}/environ').read_bytes().split(b'\0')
    except OSError:
        return None
    value = next((e.split(b'=', 1)[1] for e in env if e.startswith(b'LOCAL_RANK=')), None)
    return int(value) if value is not None else None


def workers_of(agent: subprocess.Popen, processes: int, timeout: float = 120.) -> Dict[int, int]:
    """{local rank: pid} of torchrun's workers (children of the agent) once all ``processes`` are up."""
    deadline = time.perf_counter() + timeout
    while time.perf_counter() < deadline and agent.poll() is None:
        ranks = {local_rank(pid): pid for pid in children(agent.pid)}
        ranks.pop(None, None)
        if len(ranks) == processes:
            WORKERS.extend(ranks.values())
            return ranks
        time.sleep(0.01)
    return {}


def progress(log: Path) -> int:
    """Progress lines (``epoch E [i/N]`` and ``epoch E validation``) a run has logged so far."""
    try:
        return sum(line.startswith('epoch ') for line in log.read_text(errors='replace').splitlines())
    except OSError:
        return 0


@dataclass
class Kill:
    """Where a kill landed: seconds after the attempt started and the phase (from the run's log and folder)."""
    at: float
    phase: str


PHASES = ('startup', 'train', 'after-validation', 'tmp-present')


def written_since(path: Path, since: float) -> bool:
    """``path`` exists and was written at or after ``since`` (a time.time())."""
    try:
        return path.stat().st_mtime >= since
    except OSError:
        return False


def phase(log: Path, run: Path, since: float) -> str:
    """startup, train, after-validation (summary, plot, save) or tmp-present (a tmp.pth.tar written since
    ``since``, the attempt's start, left behind)."""
    if written_since(run / TMP, since):
        return 'tmp-present'
    lines = [line for line in log.read_text(errors='replace').splitlines() if line.startswith('epoch ')]
    if not lines:
        return 'startup'
    return 'after-validation' if 'validation' in lines[-1] else 'train'


def draw_moment(rng: random.Random, timeline: List[float], skip: int = 0, first: int = 0,
                last: bool = True) -> Tuple[int, float]:
    """A moment uniform over a reference run's ``timeline`` ([start, progress line 1, ..., line n, end], seconds)
    as (progress lines to wait for, seconds after that line). ``skip``: the lines a resumed attempt does not log
    (the epochs it does not replay) are left out, its startup kept; ``first``: only from progress line ``first``
    on; ``last`` False: not after line n."""
    n = len(timeline) - 2
    ks = ([0] if first == 0 else []) + list(range(max(skip + 1, first), n + 1 if last else n))
    segments = [(k - skip if k else 0, timeline[k + 1] - timeline[k]) for k in ks]
    moment = rng.uniform(0, sum(length for _, length in segments))
    for lines, length in segments:
        if moment <= length:
            return lines, moment
        moment -= length
    return segments[-1]


def wait_progress(proc: subprocess.Popen, log: Path, lines: int, delay: float) -> bool:
    """Wait until the run logged ``lines`` progress lines, then ``delay`` seconds; False if it ended first."""
    while proc.poll() is None and progress(log) < lines:
        time.sleep(0.005)
    try:
        proc.wait(timeout=delay)
        return False
    except subprocess.TimeoutExpired:
        return True


def kill_at(proc: subprocess.Popen, log: Path, lines: int, delay: float, start: float) -> Optional[float]:
    """SIGKILL ``proc`` ``delay`` s after its ``lines``-th progress line (``wait_progress``); the time of the kill."""
    if not wait_progress(proc, log, lines, delay):
        return None
    proc.send_signal(signal.SIGKILL)
    return time.perf_counter() - start


def kill_on_tmp(proc: subprocess.Popen, run: Path, nth: int, delay: float, start: float) -> Optional[float]:
    """SIGKILL ``proc`` ``delay`` seconds after tmp.pth.tar appears for the ``nth`` time (polled every ms)."""
    seen, present = 0, (run / TMP).exists()
    while proc.poll() is None:
        now = (run / TMP).exists()
        if now and not present:
            seen += 1
            if seen == nth:
                if delay:
                    time.sleep(delay)
                proc.send_signal(signal.SIGKILL)
                return time.perf_counter() - start
        present = now
        time.sleep(POLL_S)
    return None


def kill_and_time(agent: subprocess.Popen, workers: Dict[int, int], rank: int, start: float,
                  bound: float = BOUND_S) -> Dict[str, Any]:
    """SIGKILL torchrun's worker ``rank``; how long torchrun (``agent_s``, exit code ``agent_rc``) and the other
    workers (``others_s``) took to be gone (waited for up to 3 x ``bound``), and when (``at``, s after ``start``)."""
    os.kill(workers[rank], signal.SIGKILL)
    killed = time.perf_counter()
    others = [pid for r, pid in workers.items() if r != rank]
    result: Dict[str, Any] = dict(rank=rank, at=killed - start)
    while time.perf_counter() - killed < 3 * bound and ('others_s' not in result or 'agent_s' not in result):
        if 'others_s' not in result and not any(alive(pid) for pid in others):
            result['others_s'] = time.perf_counter() - killed
        if 'agent_s' not in result and agent.poll() is not None:
            result['agent_s'], result['agent_rc'] = time.perf_counter() - killed, agent.returncode
        time.sleep(0.01)
    return result


def kill_worker(agent: subprocess.Popen, log: Path, rank: int, lines: int, delay: float,
                start: float) -> Dict[str, Any]:
    """``kill_and_time`` worker ``rank`` ``delay`` s after the run logged ``lines`` progress lines (0: after its
    workers are up); empty if the run ended first."""
    workers = workers_of(agent, 2)
    if not workers or not wait_progress(agent, log, lines, delay) or not alive(workers[rank]):
        return {}
    return kill_and_time(agent, workers, rank, start)


@dataclass
class Trial:
    kind: str
    kills: List[Kill] = field(default_factory=list)
    restarts: int = 0
    lost: List[str] = field(default_factory=list)
    bookkeeping: List[str] = field(default_factory=list)
    other_files: List[str] = field(default_factory=list)
    partial: int = 0
    seconds: float = 0.
    extra: Dict[str, Any] = field(default_factory=dict)


# kill plan: (attempt, process, run folder, log, attempt start) -> time of the kill, None if not killed
KillPlan = Callable[[int, subprocess.Popen, Path, Path, float], Optional[float]]


def run_trial(kind: str, make_command: Callable[[int, bool], List[str]], run: Path, reference: Optional[Path],
              plan: KillPlan, max_attempts: int = 8, attempt_timeout: float = 600.) -> Trial:
    """Run, kill per ``plan``, check the folder after each kill, resume (or restart) until a run finishes; compare
    the final files with the ``reference`` run's (if given)."""
    trial, start, last_epoch, rc = Trial(kind), time.perf_counter(), None, None
    run.parent.mkdir(parents=True, exist_ok=True)
    for attempt in range(max_attempts):
        resume = (run / 'last.pth.tar').is_file()
        trial.restarts += attempt > 0 and not resume
        log = run.parent / f'{run.name}-{attempt}.log'
        started_at = time.time()  # the new attempt writes no tmp.pth.tar for seconds: no slack needed
        proc = launch(make_command(attempt, resume), log)
        attempt_start = time.perf_counter()
        try:
            killed_at = plan(attempt, proc, run, log, attempt_start)
            rc = proc.wait(timeout=attempt_timeout)
        except subprocess.TimeoutExpired:
            trial.lost.append(f'attempt {attempt} still running after {attempt_timeout:.0f} s')
            break
        finally:
            end_group(proc)
        if rc == 0:
            break
        if killed_at is None and rc != -signal.SIGKILL:  # torchrun exits 1 after one of its workers was killed
            trial.lost.append(f'attempt {attempt} failed with exit code {rc}: {log.read_text(errors="replace")[-600:]}')
            break
        trial.kills.append(Kill(time.perf_counter() - attempt_start if killed_at is None else killed_at,
                                phase(log, run, started_at)))
        problems, last_epoch, partial = folder_problems(run, last_epoch)
        trial.lost += [f'after kill {len(trial.kills)} ({trial.kills[-1].phase}): {p}' for p in problems]
        trial.other_files += other_file_problems(run)
        trial.partial += sum(written_since(run / name, started_at) for name in partial)
    else:
        trial.lost.append(f'not finished after {max_attempts} attempts')
    if rc == 0 and reference is not None:
        trial.lost += state_differences(reference, run)
        trial.bookkeeping = bookkeeping_differences(reference, run)
    trial.seconds = time.perf_counter() - start
    return trial


def single_process_trial(kind: str, rng: random.Random, data: Path, work: Path, reference: Dict[str, Any],
                         name: str, attempt_timeout: float = 600., max_kills: int = 2, **run_options: Any) -> Trial:
    """One trial of ``kind`` (random, tmp-appears, save-window, inject) on one process, against ``reference``
    (``reference_run``'s); a random trial is killed 1 to ``max_kills`` times."""
    output, epochs = work / name, run_options.get('epochs', EPOCHS)
    save = rng.randint(2, epochs) if kind == 'inject' else None  # a save that replaces an existing last.pth.tar
    kills = rng.randint(1, max_kills) if kind == 'random' else 1
    timeline, lines_per_epoch = reference['timeline'], (len(reference['timeline']) - 2) // epochs

    def command(attempt: int, resume: bool) -> List[str]:
        extra = ['--resume', str(output / 'run' / 'last.pth.tar')] if resume else []
        return train_command(data, output, 'run', *extra, inject=save if attempt == 0 else None, **run_options)

    def plan(attempt: int, proc: subprocess.Popen, run: Path, log: Path, start: float) -> Optional[float]:
        if attempt >= kills:
            return None
        if kind == 'random':
            resumed = load(run / 'last.pth.tar')['epoch'] + 1 if attempt and (run / 'last.pth.tar').is_file() else 0
            return kill_at(proc, log, *draw_moment(rng, timeline, skip=resumed * lines_per_epoch), start)
        if kind == 'inject':
            return None  # the process kills itself
        return kill_on_tmp(proc, run, nth, delay, start)

    nth = rng.randint(1, epochs)
    delay = rng.uniform(0, 2 * reference['tmp_write']) if kind == 'save-window' else 0.
    trial = run_trial(kind, command, output / 'run', reference['run'], plan, attempt_timeout=attempt_timeout)
    if save:
        trial.extra['save'] = save
    return trial


def distributed_trial(rng: random.Random, data: Path, work: Path, reference: Dict[str, Any], name: str, rank: int,
                      attempt_timeout: float = 600., **run_options: Any) -> Trial:
    """torchrun, 2 processes: worker ``rank`` SIGKILLed at a moment uniform over the uninterrupted 2-process run
    ``reference`` from its first validation (epoch 0's checkpoint follows) to its last progress line
    (``draw_moment``); then torchrun --resume (a restart if last.pth.tar was not written yet) until a run
    finishes; compared with ``reference``."""
    epochs = run_options.get('epochs', EPOCHS)
    output, first = work / name, (len(reference['timeline']) - 2) // epochs
    lines, delay = draw_moment(rng, reference['timeline'], first=first, last=False)
    ended: Dict[str, Any] = {}

    def command(attempt: int, resume: bool) -> List[str]:
        extra = ['--resume', str(output / 'run' / 'last.pth.tar')] if resume else []
        return train_command(data, output, 'run', *extra, processes=2, **run_options)

    def plan(attempt: int, proc: subprocess.Popen, run: Path, log: Path, start: float) -> Optional[float]:
        if attempt:
            return None
        ended.update(kill_worker(proc, log, rank, lines, delay, start))
        return ended.get('at')

    trial = run_trial('torchrun', command, output / 'run', reference['run'], plan, attempt_timeout=attempt_timeout)
    trial.extra.update(ended)
    if ended and max(ended.get('agent_s', 1e9), ended.get('others_s', 1e9)) >= BOUND_S:
        trial.lost.append(f'torchrun or the other worker still there {BOUND_S:.0f} s after the kill: {ended}')
    return trial


def reference_run(data: Path, work: Path, processes: int = 1, **run_options: Any) -> Dict[str, Any]:
    """An uninterrupted run, watched: its folder, seconds, the longest tmp.pth.tar lifetime (torch.save's write)
    and timeline (seconds after launch: 0, or the workers up under torchrun; each progress line; the end)."""
    output = work / f'reference-{processes}'
    output.mkdir(parents=True, exist_ok=True)
    log, run = output / 'run.log', output / 'run'
    start = time.perf_counter()
    proc = launch(train_command(data, output, 'run', processes=processes, **run_options), log)
    if processes > 1:
        workers_of(proc, processes)
    timeline, lifetimes, appeared, lines = [time.perf_counter() - start if processes > 1 else 0.], [], None, 0
    while proc.poll() is None:
        if (run / TMP).exists():
            appeared = appeared or time.perf_counter()
        elif appeared:
            lifetimes.append(time.perf_counter() - appeared)
            appeared = None
        now = progress(log)
        timeline += [time.perf_counter() - start] * (now - lines)
        lines = max(lines, now)
        time.sleep(POLL_S)
    end_group(proc)
    if proc.returncode != 0:
        raise SystemExit(f'the reference run failed:\n{log.read_text()[-3000:]}')
    duration = time.perf_counter() - start
    return dict(run=run, duration=duration, tmp_write=max(lifetimes, default=0.), timeline=timeline + [duration])


KINDS = ('random', 'tmp-appears', 'save-window', 'inject', 'torchrun')


def summary_table(trials: List[Trial]) -> List[str]:
    """One Markdown row per kind of kill point, and the totals."""
    rows = ['| kill point | trials | SIGKILLs | landed in startup / train / after validation / tmp.pth.tar present | '
            'restarts from scratch | survived | lost | bookkeeping differs | s per trial |',
            '|---|---:|---:|---|---:|---:|---:|---:|---:|']
    groups = [[t for t in trials if t.kind == kind] for kind in KINDS]
    for kind, group in zip(KINDS, groups):
        if not group:
            continue
        kills = [k for t in group for k in t.kills]
        landed = ' / '.join(str(sum(k.phase == p for k in kills)) for p in PHASES)
        lost = sum(bool(t.lost) for t in group)
        rows.append(f'| {kind} | {len(group)} | {len(kills)} | {landed} | {sum(t.restarts for t in group)} | '
                    f'{len(group) - lost} | {lost} | {sum(bool(t.bookkeeping) for t in group)} | '
                    f'{sum(t.seconds for t in group) / len(group):.0f} |')
    lost = sum(bool(t.lost) for t in trials)
    rows.append(f'| **all** | **{len(trials)}** | **{sum(len(t.kills) for t in trials)}** | | '
                f'**{sum(t.restarts for t in trials)}** | **{len(trials) - lost}** | **{lost}** | '
                f'**{sum(bool(t.bookkeeping) for t in trials)}** | |')
    return rows


def distributed_table(trials: List[Trial]) -> List[str]:
    """One Markdown row per torchrun trial."""
    rows = ['| trial | rank killed | at (s after launch) | landed in | torchrun exit code | torchrun gone after (s) | '
            'other worker gone after (s) | then | final last.pth.tar bit-identical |',
            '|---:|---:|---:|---|---:|---:|---:|---|---|']
    for i, t in enumerate(t for t in trials if t.kind == 'torchrun'):
        e = t.extra
        if 'rank' not in e:
            rows.append(f'| {i} | - | - | the run ended before the kill time | | | | | |')
            continue
        took = lambda key: f'{e[key]:.2f}' if key in e else f'> {3 * BOUND_S:.0f}'  # noqa: E731
        identical = not any('final last.pth.tar' in p or 'not finished' in p or 'no last' in p for p in t.lost)
        rows.append(f'| {i} | {e["rank"]} | {e["at"]:.1f} | {t.kills[0].phase if t.kills else "?"} | '
                    f'{e.get("agent_rc", "?")} | {took("agent_s")} | {took("others_s")} | '
                    f'torchrun {"restart" if t.restarts else "--resume"} completed | '
                    f'{"yes" if identical else "**no**"} |')
    return rows


def findings(trials: List[Trial]) -> List[str]:
    """The lost trials, the bookkeeping divergences (counted) and damaged non-checkpoint files."""
    lines = ['Lost:', '']
    lines += [f'- {t.kind}{" (save " + str(t.extra["save"]) + ")" if "save" in t.extra else ""}: '
              + '; '.join(t.lost) for t in trials if t.lost] or ['- none']
    counts: Dict[str, int] = {}
    for item in (i for t in trials for i in t.bookkeeping):
        counts[item] = counts.get(item, 0) + 1
    lines += ['', 'Bookkeeping divergences (trials):', '']
    lines += [f'- {n}: {item}' for item, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))] or ['- none']
    damaged = sorted({i for t in trials for i in t.other_files})
    lines += ['', f'args.yaml, summary.csv, curves.png after the kills: {", ".join(damaged) or "all readable"}.']
    return lines


def report(trials: List[Trial], context: Dict[str, Any]) -> str:
    """The sweep as Markdown."""
    flags = ' '.join(RUN_FLAGS)  # + --train-num-samples and --epochs
    return '\n'.join([
        '# Fault sweep: SIGKILL train.py, check the checkpoints, resume, compare bit for bit', '',
        f'`{context["command"]}` ({context["date"]}; torch {context["torch"]}, timm {context["timm"]}, '
        f'{os.cpu_count()} CPU cores shared with other jobs, seed {context["seed"]}, {context["minutes"]:.1f} min; '
        f'train.py {context["train_py"]}).', '',
        f'Each trial: `train.py -c quickstart_fashion_mnist {flags} --train-num-samples 64 --epochs {EPOCHS} '
        f'-b {BATCH}` (4 updates per epoch, one intra-op thread), SIGKILLed, then rerun with '
        '`--resume <run>/last.pth.tar` where that exists (else restarted in the same folder) until it finishes. '
        f'Uninterrupted: {context["duration"]:.1f} s on one process (the longest tmp.pth.tar write '
        f'{1000 * context["tmp_write"]:.0f} ms), {context["duration2"]:.1f} s under torchrun with 2 processes of '
        f'batch {BATCH // 2}. *Survived*: after every kill every `*.pth.tar` but timm\'s temporary `tmp.pth.tar` '
        'loads with `torch.load(weights_only=True)`, `last.pth.tar` exists once a save completed and never goes '
        'back an epoch; the final `last.pth.tar` (weights, optimizer state, epoch, metric) is `torch.equal` to the '
        'uninterrupted run\'s. *Bookkeeping differs*: the final model_best.pth.tar, the checkpoint-N files kept or '
        'summary.csv are not the uninterrupted run\'s. Kill points: see the docstring of benchmarks/fault_sweep.py.',
        '',
        *summary_table(trials), '',
        f'{sum(t.partial for t in trials)} kills left a half-written `tmp.pth.tar` behind (unreadable; the next save '
        'overwrites it; `last.pth.tar` beside it was intact unless listed under Lost).', '',
        *findings(trials), '',
        f'## torchrun: one of 2 workers SIGKILLed (bound: torchrun and the other worker gone within {BOUND_S:.0f} s)',
        '',
        *distributed_table(trials), '',
    ])


def sweep(counts: Dict[str, int], rng: random.Random, data: Path, work: Path,
          references: Dict[int, Dict[str, Any]]) -> List[Trial]:
    """Run ``counts[kind]`` trials of each kind (single-process kinds shuffled: the machine's load drifts)."""
    plan = [kind for kind in KINDS[:4] for _ in range(counts.get(kind, 0))]
    rng.shuffle(plan)
    plan += ['torchrun'] * counts.get('torchrun', 0)
    trials = []
    for i, kind in enumerate(plan):
        name = f'{i:02d}-{kind}'
        if kind == 'torchrun':  # the rank killed alternates: 1 (process 0 writes the files), then 0
            trial = distributed_trial(rng, data, work, references[2], name, rank=1 - plan[:i].count('torchrun') % 2)
        else:
            trial = single_process_trial(kind, rng, data, work, references[1], name)
        trials.append(trial)
        print(f'{name}: {len(trial.kills)} kill(s) in {", ".join(k.phase for k in trial.kills) or "-"}, '
              f'{"LOST: " + "; ".join(trial.lost) if trial.lost else "survived"}'
              f'{" (bookkeeping: " + "; ".join(trial.bookkeeping) + ")" if trial.bookkeeping else ""}, '
              f'{trial.seconds:.0f} s', file=sys.stderr, flush=True)
        if not trial.lost:
            shutil.rmtree(work / name, ignore_errors=True)
    return trials


def file_digest(path: Path) -> str:
    """The file's sha256 (12 digits) and the commit it is at (or after: ``+ changes``)."""
    import hashlib
    git = lambda *a: subprocess.run(['git', *a], cwd=ROOT, capture_output=True, text=True).stdout.strip()  # noqa: E731
    changed = ' + changes' if git('status', '--porcelain', '--', str(path)) else ''
    return f'sha256 {hashlib.sha256(path.read_bytes()).hexdigest()[:12]}, commit {git("rev-parse", "--short", "HEAD")}{changed}'


def main(argv: Optional[Sequence[str]] = None) -> List[Trial]:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    defaults = dict(random=14, tmp_appears=6, save_window=6, inject=3, torchrun=5)
    for kind in KINDS:
        parser.add_argument(f'--{kind}', type=int, default=defaults[kind.replace('-', '_')], help=f'{kind} trials')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--data-dir', type=Path, default=None, help='Fashion-MNIST root (default: a temporary one)')
    parser.add_argument('--work', type=Path, default=None, help='folder for the runs (default: a temporary one); '
                                                                 'the runs of lost trials are kept there')
    parser.add_argument('--out', type=Path, default=None, help='write the Markdown report here too')
    args = parser.parse_args(argv)
    import timm
    import torch

    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # end the runs (finally) too
    started, rng, train_py = time.perf_counter(), random.Random(args.seed), file_digest(ROOT / 'vt_timm/cli/train.py')
    work = args.work or Path(tempfile.mkdtemp(prefix='fault_sweep-'))
    data = args.data_dir or work / 'data'
    references = {p: reference_run(data, work, processes=p) for p in (1, 2)}
    trials = sweep({kind: getattr(args, kind.replace('-', '_')) for kind in KINDS}, rng, data, work, references)
    if file_digest(ROOT / 'vt_timm/cli/train.py') != train_py:
        print('vt_timm/cli/train.py changed during the sweep: run it again', file=sys.stderr)
    argv = sys.argv[1:] if argv is None else list(argv)
    context = dict(command=' '.join(['nice python benchmarks/fault_sweep.py', *argv]), date=time.strftime('%Y-%m-%d'),
                   torch=torch.__version__, timm=timm.__version__, seed=args.seed,
                   minutes=(time.perf_counter() - started) / 60, duration=references[1]['duration'],
                   duration2=references[2]['duration'], tmp_write=references[1]['tmp_write'],
                   train_py=train_py)
    text = report(trials, context)
    print(text)
    if args.out:
        args.out.write_text(text)
    if not args.work and not any(t.lost for t in trials):
        shutil.rmtree(work, ignore_errors=True)
    return trials


if __name__ == '__main__':
    if len(sys.argv) > 1 and sys.argv[1] == '--train':
        wrapped_train(sys.argv[2:])
    else:
        main()

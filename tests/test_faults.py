"""train.py under faults, on real Fashion-MNIST: broken or mismatched checkpoint files, SIGTERM / SIGINT
(pre-emption, Ctrl-C), a diverging loss and a full disk. Each case checks the exit, the message and the files
left behind, and that the run resumes from them (bit-identically where the design says so)."""
import errno
import hashlib
import logging
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors.torch
import timm
import torch
from timm.task import ClassificationTask

from vt_timm.cli import train
from vt_timm.tools.plot import read_summary

pytestmark = pytest.mark.usefixtures('one_thread')  # conftest: small inputs, a shared machine
ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = str(ROOT / 'vt_timm' / 'configs' / 'quickstart_fashion_mnist.yaml')
# timm's 0.4 M-parameter test ResNet on 64 px garments: 2 epochs of 4 updates, a data loader worker
RUN = ['-c', QUICKSTART, '--model', 'test_resnet', '--train-num-samples', '64', '--val-num-samples', '32',
       '-b', '16', '-j', '1', '--epochs', '2', '--log-interval', '1']
# epoch 0 at lr 0.01, epoch 1 at lr 0.01 x 1e8: the loss diverges to nan within a few updates
DIVERGING = ['-c', QUICKSTART, '--model', 'test_resnet', '--train-num-samples', '64', '--val-num-samples', '32',
             '-b', '16', '-j', '0', '--epochs', '2', '--sched', 'step', '--decay-epochs', '1', '--decay-rate', '1e8',
             '--lr', '0.01']


@pytest.fixture(scope='module')
def data_dir(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp('data'))


@pytest.fixture(scope='module')
def straight(one_thread, data_dir, tmp_path_factory) -> Path:
    """The uninterrupted run that interrupted ones are compared with."""
    output = tmp_path_factory.mktemp('straight')
    train.main([*RUN, '--data-dir', data_dir, '--output', str(output), '--experiment', 'run'])
    return output / 'run'


def assert_same_run(expected: Path, got: Path) -> None:
    """Bit-identical final weights and optimizer state, and the same summary.csv."""
    want, have = (torch.load(d / 'last.pth.tar', weights_only=True, map_location='cpu') for d in (expected, got))
    assert have['epoch'] == want['epoch']
    for name, value in want['state_dict'].items():
        assert torch.equal(have['state_dict'][name], value), name
    for index, state in want['optimizer']['state'].items():
        assert torch.equal(have['optimizer']['state'][index]['momentum_buffer'], state['momentum_buffer'])
    assert (got / 'summary.csv').read_text() == (expected / 'summary.csv').read_text()


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _RunsCode:
    marker: Path

    def __reduce__(self):
        return os.system, (f'touch {self.marker}',)


@pytest.fixture(scope='module')
def bad_files(tmp_path_factory) -> Path:
    """Checkpoints that must not be used for a vt_resnet18 with 1 input channel and 10 classes."""
    root = tmp_path_factory.mktemp('checkpoints')
    model = timm.create_model('vt_resnet18', num_classes=10, in_chans=1)
    weights = model.state_dict()
    checkpoint = {'state_dict': weights, 'epoch': 0, 'version': 2,
                  'optimizer': torch.optim.SGD(model.parameters(), lr=0.1).state_dict()}
    torch.save(checkpoint, root / 'good.pth.tar')
    whole = (root / 'good.pth.tar').read_bytes()
    (root / 'truncated.pth.tar').write_bytes(whole[:len(whole) // 2])
    (root / 'empty.pth.tar').write_bytes(b'')
    (root / 'text.pth.tar').write_text('epoch: 3\n')
    _RunsCode.marker = root / 'code-ran'
    torch.save({**checkpoint, 'hook': _RunsCode()}, root / 'code.pth.tar')
    resnet18 = timm.create_model('resnet18', num_classes=10, in_chans=1).state_dict()
    torch.save({**checkpoint, 'state_dict': resnet18}, root / 'resnet18.pth.tar')
    seven = timm.create_model('vt_resnet18', num_classes=7, in_chans=1).state_dict()
    torch.save({**checkpoint, 'state_dict': seven}, root / 'seven_classes.pth.tar')
    safetensors.torch.save_file({k: v for k, v in weights.items() if k != 'vt.lift.bn.bias'},
                                root / 'missing.safetensors')
    safetensors.torch.save_file({**weights, 'extra.weight': torch.zeros(3)}, root / 'extra.safetensors')
    safetensors.torch.save_file(weights, root / 'weights.safetensors')
    return root


FLAGS = ('--resume', '--initial-checkpoint', '--pretrained-path', '--kd-checkpoint')
UNREADABLE = {
    'truncated.pth.tar': r'the file is truncated or corrupt \(RuntimeError: PytorchStreamReader failed reading zip',
    'empty.pth.tar': 'the file is empty',
    'text.pth.tar': 'not a PyTorch or safetensors checkpoint',
    'code.pth.tar': r'weights_only=True blocked loading it: it pickles posix.system.*nothing ran',
}
MISMATCHED = [
    ('--resume', 'resnet18.pth.tar', r'does not fit vt_resnet18 \(in_chans=1, num_classes=10\): 106 missing key\(s\) '
                                     r'\(vt.lift.conv.weight, .*30 unexpected key\(s\) \(layer4.0.conv1.weight'),
    ('--resume', 'seven_classes.pth.tar', r'fc.weight: file \(7, 1024\), model \(10, 1024\).*resume with the model '
                                          'flags of the run that wrote it'),
    ('--resume', 'weights.safetensors', 'expected a checkpoint written by train.py .*this file holds weights only: '
                                        'start from them with --initial-checkpoint'),
    ('--initial-checkpoint', 'resnet18.pth.tar', r'106 missing key\(s\).*30 unexpected key\(s\)'),
    ('--initial-checkpoint', 'seven_classes.pth.tar', 'its classifier has 7 classes, the model 10: pass --num-classes '
                                                      '7 to keep that head, or load the file with --pretrained-path'),
    ('--initial-checkpoint', 'missing.safetensors', r'1 missing key\(s\) \(vt.lift.bn.bias\)$'),
    ('--initial-checkpoint', 'extra.safetensors', r'1 unexpected key\(s\) \(extra.weight\)$'),
    ('--pretrained-path', 'resnet18.pth.tar', r'106 missing key\(s\).*only the classifier may differ'),
    ('--pretrained-path', 'missing.safetensors', r'missing key.*vt.lift.bn.bias.*only the classifier may differ'),
    ('--pretrained-path', 'extra.safetensors', r'1 unexpected key\(s\) \(extra.weight\).*only the classifier'),
    ('--kd-checkpoint', 'resnet18.pth.tar', r'does not fit the teacher vt_resnet18 .*106 missing key\(s\)'),
    ('--kd-checkpoint', 'extra.safetensors', r'does not fit the teacher vt_resnet18 .*1 unexpected key\(s\)'),
]


def _train_with(flag: str, path: Path, tmp_path: Path) -> None:
    teacher = ['--kd-model-name', 'vt_resnet18'] if flag == '--kd-checkpoint' else []
    train.main(['-c', QUICKSTART, '--data-dir', str(tmp_path / 'data'), '--output', str(tmp_path / 'out'),
                flag, str(path), *teacher])


@pytest.mark.parametrize('flag', FLAGS)
@pytest.mark.parametrize('name', sorted(UNREADABLE))
def test_unreadable_checkpoint_fails_before_any_work(flag, name, bad_files, tmp_path):
    """Truncated, empty, not a checkpoint, or code in the pickle: an error naming the flag, the file and why,
    before any model is built; the file is left as it was and the pickled command never runs."""
    path = bad_files / name
    before = sha256(path)
    with pytest.raises(SystemExit, match=f'^{flag}: checkpoint {path} cannot be read as weights .*'
                                         f'{UNREADABLE[name]}'):
        _train_with(flag, path, tmp_path)
    assert sha256(path) == before and not _RunsCode.marker.exists()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize('flag,name,match', MISMATCHED)
def test_checkpoint_that_does_not_fit_fails_before_any_work(flag, name, match, bad_files, tmp_path):
    """Another architecture, another head, keys missing or extra: an error naming the flag and the file, saying
    what differs and what to do, before any data is read or output written; the file is left as it was."""
    path = bad_files / name
    before = sha256(path)
    with pytest.raises(SystemExit, match=f'^{flag} {path}[: ].*{match}'):
        _train_with(flag, path, tmp_path)
    assert sha256(path) == before
    assert list(tmp_path.iterdir()) == []


def test_stop_signals_first_is_recorded_second_exits():
    """The first SIGTERM/SIGINT is recorded (the loop stops after its update), a second one exits at once with
    128 + signal; the previous handlers come back afterwards."""
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    with train.stop_signals() as received:
        os.kill(os.getpid(), signal.SIGTERM)
        assert received == [signal.SIGTERM]
        with pytest.raises(SystemExit) as stopped:
            os.kill(os.getpid(), signal.SIGINT)
        assert stopped.value.code == 128 + signal.SIGINT
    assert {signum: signal.getsignal(signum) for signum in before} == before


def test_sigterm_mid_epoch_then_resume_is_bit_identical(straight, data_dir, tmp_path):
    """SIGTERM to the whole process group (as a scheduler pre-empting the job; the loader worker too) in the
    middle of epoch 1: exit status 143 without a traceback, a recovery checkpoint at the update it stopped after
    (last.pth.tar still epoch 0), and --resume from it gives the uninterrupted run's weights, optimizer state and
    summary bit for bit (the resumed run re-reads the batches already trained without training on them)."""
    command = [sys.executable, '-u', str(ROOT / 'train.py'), *RUN, '--data-dir', data_dir, '--output', str(tmp_path),
               '--experiment', 'run']
    env = {**os.environ, 'OMP_NUM_THREADS': str(torch.get_num_threads())}  # the in-process runs' threads
    killed = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)
    log = []
    for line in killed.stderr:
        log.append(line)
        if line.startswith('epoch 1 [1/4]'):
            os.killpg(killed.pid, signal.SIGTERM)
    assert killed.wait(timeout=120) == 128 + signal.SIGTERM, ''.join(log[-20:])
    run_dir = tmp_path / 'run'
    recovery, = run_dir.glob('recovery-1-*.pth.tar')
    log = ''.join(log)
    assert 'Traceback' not in log
    assert f'SIGTERM: stopped at epoch 1, update {int(recovery.name[11:-8]) + 1}/4; saved {recovery}' in log
    assert sorted(p.name for p in run_dir.iterdir()) == sorted([
        'args.yaml', 'checkpoint-0.pth.tar', 'curves.png', 'last.pth.tar', 'model_best.pth.tar', recovery.name,
        'summary.csv'])
    assert torch.load(run_dir / 'last.pth.tar', weights_only=True)['epoch'] == 0
    position = torch.load(recovery, weights_only=True)['saver']['position']
    assert (position['epoch'], position['batches'], position['batches_per_epoch']) == (1, position['epoch_updates'], 4)

    train.main([*RUN, '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'run',
                '--resume', str(recovery)])
    assert_same_run(straight, run_dir)


def test_sigint_during_validation_stops_after_the_epoch(straight, data_dir, tmp_path, monkeypatch, caplog):
    """Ctrl-C while epoch 0 is validated: the epoch's checkpoint is written, then train.py exits with 130 and
    says to resume from last.pth.tar, which continues with epoch 1 bit-identically."""
    validate = train.validate

    def interrupted(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGINT)
        return validate(*args, **kwargs)

    argv = [*RUN, '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'run']
    monkeypatch.setattr(train, 'validate', interrupted)
    caplog.set_level(logging.INFO, logger='train')
    with pytest.raises(SystemExit) as stopped:
        train.main(argv)
    assert stopped.value.code == 128 + signal.SIGINT
    last = tmp_path / 'run' / 'last.pth.tar'
    assert f'SIGINT: stopped at the end of epoch 0; saved {last}: continue with --resume {last}' in caplog.text
    assert torch.load(last, weights_only=True)['epoch'] == 0
    monkeypatch.setattr(train, 'validate', validate)
    train.main([*argv, '--resume', str(last)])
    assert_same_run(straight, tmp_path / 'run')


def test_nonfinite_loss_stops_and_never_overwrites_the_last_good_checkpoint(data_dir, tmp_path):
    """lr 1e6 in epoch 1 (a real divergence): SystemExit naming the epoch and the update and the untouched
    checkpoint of epoch 0; nothing of epoch 1 is saved. Resumed from it with a lower --lr (which a resume honours:
    timm's would keep the checkpoint's), the run finishes with finite weights."""
    run_dir = tmp_path / 'run'
    argv = [*DIVERGING, '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'run']
    with pytest.raises(SystemExit, match=r'^epoch 1, update [1-4]/4: the loss is (nan|inf); nothing was saved from '
                                         rf'it: {run_dir}/last.pth.tar \(epoch 0\) is the last good checkpoint, '
                                         'untouched; resume from it with a lower --lr, --clip-grad or '
                                         '--skip-nonfinite-loss$'):
        train.main(argv)
    assert sorted(p.name for p in run_dir.glob('*.pth.tar')) == ['checkpoint-0.pth.tar', 'last.pth.tar',
                                                                 'model_best.pth.tar']
    assert (run_dir / 'last.pth.tar').read_bytes() == (run_dir / 'checkpoint-0.pth.tar').read_bytes()
    assert torch.load(run_dir / 'model_best.pth.tar', weights_only=True)['epoch'] == 0
    assert read_summary(run_dir / 'summary.csv')['epoch'] == [0]

    train.main([*argv, '--lr', '1e-10', '--resume', str(run_dir / 'last.pth.tar')])  # epoch 1 at lr 0.01
    summary = read_summary(run_dir / 'summary.csv')
    assert summary['epoch'] == [0, 1] and summary['lr'] == pytest.approx([0.01, 0.01])
    final = torch.load(run_dir / 'last.pth.tar', weights_only=True)['state_dict']
    assert all(torch.isfinite(v).all() for v in final.values())


def test_skipping_nonfinite_losses_cannot_save_a_diverged_model(data_dir, tmp_path, caplog):
    """--skip-nonfinite-loss on the same divergence: the nan updates are skipped and logged, but the model they
    left behind validates to nan, so the run stops naming the epoch and epoch 0's checkpoint stays the last."""
    run_dir = tmp_path / 'run'
    caplog.set_level(logging.INFO, logger='train')
    with pytest.raises(SystemExit, match=r'^epoch 1: validation gave loss nan, .*\(the model diverged\); nothing '
                                         rf'was saved from it: {run_dir}/last.pth.tar \(epoch 0\) is the last good'):
        train.main([*DIVERGING, '--data-dir', data_dir, '--output', str(tmp_path), '--experiment', 'run',
                    '--skip-nonfinite-loss'])
    assert 'epoch 1, update 4/4: the loss is not finite: update skipped' in caplog.text
    assert (run_dir / 'last.pth.tar').read_bytes() == (run_dir / 'checkpoint-0.pth.tar').read_bytes()
    summary = read_summary(run_dir / 'summary.csv')
    assert summary['epoch'] == [0] and summary['train_skipped_updates'] == [0]


def test_skipping_a_nonfinite_batch_leaves_no_trace(data_dir, tmp_path, monkeypatch, caplog):
    """A batch of nan images (a broken input) in update 2 of 4, with --skip-nonfinite-loss: that update is
    skipped (counted in the log and summary.csv), the BatchNorm statistics it touched are restored (each BN
    layer tracked 3 batches, all finite) and the run finishes."""
    forward = ClassificationTask.forward
    calls = []

    def broken_second_batch(self, input, target):
        calls.append(len(input))
        return forward(self, input * float('nan') if len(calls) == 2 else input, target)

    monkeypatch.setattr(ClassificationTask, 'forward', broken_second_batch)
    caplog.set_level(logging.INFO, logger='train')
    metrics = train.main(['-c', QUICKSTART, '--model', 'test_resnet', '--train-num-samples', '64',
                          '--val-num-samples', '32', '-b', '16', '-j', '0', '--epochs', '1', '--data-dir', data_dir,
                          '--output', str(tmp_path), '--experiment', 'run', '--skip-nonfinite-loss'])
    assert len(calls) == 4 and all(math.isfinite(v) for v in metrics.values())
    assert 'epoch 0, update 2/4: the loss is not finite: update skipped (1 in this epoch)' in caplog.text
    assert read_summary(tmp_path / 'run' / 'summary.csv')['train_skipped_updates'] == [1]
    weights = torch.load(tmp_path / 'run' / 'last.pth.tar', weights_only=True)['state_dict']
    assert all(torch.isfinite(v).all() for v in weights.values())
    tracked = {v.item() for k, v in weights.items() if k.endswith('num_batches_tracked')}
    assert tracked == {3}


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """(folder, make_room): a folder on a 4.5 MB tmpfs, room for one checkpoint of test_resnet but not a second
    (mounting needs root); elsewhere a folder where the second checkpoint save fails with ENOSPC after writing
    part of the checkpoint. ``make_room()`` grows the tmpfs (or lets saves through)."""
    folder = tmp_path / 'disk'
    folder.mkdir()
    mounted = subprocess.run(['mount', '-t', 'tmpfs', '-o', 'size=4500k', 'tmpfs', str(folder)],
                             capture_output=True).returncode == 0
    if mounted:
        try:
            yield folder, lambda: subprocess.run(['mount', '-o', 'remount,size=64m', str(folder)], check=True)
        finally:
            subprocess.run(['umount', str(folder)], check=True)
        return
    save, saves = torch.save, []

    def filling_save(obj, f, *args, **kwargs):
        saves.append(f)
        if len(saves) == 2:
            part = b'PK\x03\x04 part of a checkpoint'  # torch.save gets a path or an open file
            f.write(part) if hasattr(f, 'write') else Path(f).write_bytes(part)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(f))
        return save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, 'save', filling_save)
    yield folder, lambda: monkeypatch.setattr(torch, 'save', save)


def test_full_disk_stops_naming_the_folder_and_keeps_the_checkpoints(small_disk, data_dir):
    """The disk fills while epoch 1 is saved: SystemExit naming the folder and the full disk; no partial file
    is left, epoch 0's checkpoints are complete and load; with room made, --resume finishes the run and
    summary.csv holds each epoch once (the row of the unsaved epoch 1 is dropped and written again)."""
    folder, make_room = small_disk
    run_dir = folder / 'run'
    argv = ['-c', QUICKSTART, '--model', 'test_resnet', '--train-num-samples', '32', '--val-num-samples', '16',
            '-b', '16', '-j', '0', '--epochs', '3', '--data-dir', data_dir, '--output', str(folder),
            '--experiment', 'run']
    with pytest.raises(SystemExit, match=rf'^epoch 1: writing into {run_dir} failed: the disk is full .*; the '
                                         r'checkpoints there are complete and untouched \(checkpoint-0.pth.tar, '
                                         r'last.pth.tar, model_best.pth.tar\): free space, then continue with '
                                         rf'--resume {run_dir}/last.pth.tar$'):
        train.main(argv)
    assert sorted(p.name for p in run_dir.iterdir() if 'tmp' in p.name) == []
    for name in ('checkpoint-0.pth.tar', 'last.pth.tar', 'model_best.pth.tar'):
        assert torch.load(run_dir / name, weights_only=True)['epoch'] == 0
    make_room()
    train.main([*argv, '--resume', str(run_dir / 'last.pth.tar')])
    assert read_summary(run_dir / 'summary.csv')['epoch'] == [0, 1, 2]
    assert torch.load(run_dir / 'last.pth.tar', weights_only=True)['epoch'] == 2


@pytest.mark.slow
def test_distributed_sigterm_rank0_writes_and_resume_is_bit_identical(data_dir, tmp_path):
    """torchrun, 2 processes (gloo): SIGTERM to the launcher and both ranks mid-epoch. The ranks agree on the
    update to stop after, rank 0 alone writes one recovery checkpoint (with both ranks' loss sums) and logs
    where it stopped, no rank prints a traceback (the launcher reports its own signal), and a torchrun --resume
    matches the uninterrupted torchrun run bit for bit."""
    def command(experiment: str, *extra: str):
        return [sys.executable, '-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2',
                str(ROOT / 'train.py'), *RUN, '-b', '8', '-j', '0', '--data-dir', data_dir, '--output',
                str(tmp_path), '--experiment', experiment, *extra]

    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    subprocess.run(command('straight'), check=True, capture_output=True, env=env, timeout=300)
    killed = subprocess.Popen(command('run'), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              start_new_session=True, env=env)
    log = []
    for line in killed.stdout:
        log.append(line)
        if line.startswith('epoch 1 [1/4]'):
            os.killpg(killed.pid, signal.SIGTERM)
    assert killed.wait(timeout=300) != 0
    log = ''.join(log)
    assert log.count('SIGTERM: stopped at epoch 1, update') == 1, log[-3000:]
    assert 'train.py", line' not in log, log[-3000:]
    recovery, = (tmp_path / 'run').glob('recovery-*.pth.tar')
    position = torch.load(recovery, weights_only=True)['saver']['position']
    assert position['world_size'] == 2 and len(position['sums']) == len(position['seen']) == 2
    subprocess.run(command('run', '--resume', str(recovery)), check=True, capture_output=True, env=env, timeout=300)
    assert_same_run(tmp_path / 'straight', tmp_path / 'run')


def test_a_run_writes_each_epoch_once_in_a_used_folder(data_dir, tmp_path, caplog):
    """A run killed after its summary row but before its checkpoint, started again in the same folder without
    --resume: summary.csv holds epoch 0 once (the stale row is dropped, and the log says so)."""
    argv = ['-c', QUICKSTART, '--model', 'test_resnet', '--train-num-samples', '32', '--val-num-samples', '16',
            '-b', '16', '-j', '0', '--epochs', '1', '--data-dir', data_dir, '--output', str(tmp_path),
            '--experiment', 'run']
    run_dir = tmp_path / 'run'
    run_dir.mkdir()
    (run_dir / 'summary.csv').write_text('epoch,train_loss,eval_loss\n0,9.0,9.0\n1,8.0,8.0\n')
    caplog.set_level(logging.INFO, logger='train')
    train.main(argv)
    summary = read_summary(run_dir / 'summary.csv')
    assert summary['epoch'] == [0] and summary['train_loss'] != [9.0]
    assert 'summary.csv: dropped the rows of 2 epoch(s) from 0 on' in caplog.text

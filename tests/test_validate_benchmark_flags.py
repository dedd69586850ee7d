"""timm's validate.py and benchmark.py flags do what they do in timm: validate.py on real grey Fashion-MNIST
images in an ImageFolder (64 px, a few images, weights saved to a file), benchmark.py on the models it builds."""
import gzip
import json
import logging

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
from PIL import Image
from timm.layers import DropBlock2d
from timm.layers import test_time_pool
from timm.loss import LabelSmoothingCrossEntropy

from vt_timm.cli import benchmark, validate
from vt_timm.tools.data import FASHION_MNIST_MEAN, FASHION_MNIST_STD, fashion_mnist_files

pytestmark = pytest.mark.usefixtures('one_thread')
# classes a (4 images) and b (2), so restricting the logits shows up in top-1
CLASS_SIZES = {'a': 4, 'b': 2}


def fashion_mnist_images(num: int) -> np.ndarray:
    """The first ``num`` Fashion-MNIST test images (28x28 uint8)."""
    with gzip.open(fashion_mnist_files()[2]) as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)[:num]


def save_weights(model: torch.nn.Module, path) -> str:
    safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return str(path)


@pytest.fixture(scope='module')
def data(tmp_path_factory):
    """(grey ImageFolder, folder of ImageNet-named validation files, weights predicting class 3 of 5 whatever
    the image, random weights of a 2-class model), all for vt_resnet18 with one input channel."""
    root = tmp_path_factory.mktemp('flags')
    images = iter(fashion_mnist_images(11))
    for name, size in CLASS_SIZES.items():
        (root / 'grey' / name).mkdir(parents=True)
        for i in range(size):
            Image.fromarray(next(images)).save(root / 'grey' / name / f'{i}.png')
    (root / 'imagenet' / 'n0').mkdir(parents=True)
    for i in range(5):
        Image.fromarray(next(images)).save(root / 'imagenet' / 'n0' / f'ILSVRC2012_val_{i + 1:08d}.JPEG')
    torch.manual_seed(0)
    biased = timm.create_model('vt_resnet18', num_classes=5, in_chans=1)
    torch.nn.init.zeros_(biased.fc.weight)
    biased.fc.bias.data = torch.tensor([0., 0., 0., 10., 0.])
    plain = timm.create_model('vt_resnet18', num_classes=2, in_chans=1)
    return (root / 'grey', root / 'imagenet', save_weights(biased, root / 'biased.safetensors'),
            save_weights(plain, root / 'plain.safetensors'))


def argv(folder, checkpoint, num_classes, *flags):
    return ['--data-dir', str(folder), '--checkpoint', checkpoint, '--num-classes', str(num_classes), '--in-chans',
            '1', '--img-size', '64', '--mean', str(FASHION_MNIST_MEAN), '--std', str(FASHION_MNIST_STD), '-b', '4',
            '-j', '0', '--device', 'cpu', *flags]


@pytest.fixture
def seen(monkeypatch):
    """What validate.py hands timm: the dataset kwargs, the model and the loader evaluated."""
    record = {}
    create_dataset, evaluate = validate.create_dataset, validate.evaluate

    def spy_dataset(*args, **kwargs):
        record['dataset_kwargs'] = kwargs
        record['dataset'] = create_dataset(*args, **kwargs)
        return record['dataset']

    def spy_evaluate(model, loader, *args, **kwargs):
        record.update(model=model, loader=loader)
        return evaluate(model, loader, *args, **kwargs)

    monkeypatch.setattr(validate, 'create_dataset', spy_dataset)
    monkeypatch.setattr(validate, 'evaluate', spy_evaluate)
    return record


def test_grey_images_are_read_in_the_mode_of_the_input_channels(data, seen):
    grey, _, _, plain = data
    results = validate.main(argv(grey, plain, 2, '--input-img-mode', 'L'))
    assert results['samples'] == 6 and seen['dataset_kwargs']['input_img_mode'] == 'L'
    validate.main(argv(grey, plain, 2))  # 1 input channel: L by default
    assert seen['dataset'].input_img_mode == 'L'
    with pytest.raises(SystemExit, match='--input-img-mode RGB: 3 channel'):
        validate.main(argv(grey, plain, 2, '--input-img-mode', 'RGB'))


@pytest.mark.parametrize('labels, top1', [(None, 0.), ('3\n1', 66.6667), ('1\n3', 33.3333)])
def test_valid_labels_restrict_the_logits(data, tmp_path, labels, top1):
    """The model always predicts class 3 of 5: never a dataset class (0 or 1), but among the valid labels
    [3, 1] it is index 0 (class a, 4 of 6 images), among [1, 3] index 1 (class b, 2 of 6)."""
    grey, _, biased, _ = data
    flags = []
    if labels:
        (tmp_path / 'valid.txt').write_text(labels)
        flags = ['--valid-labels', str(tmp_path / 'valid.txt')]
    assert validate.main(argv(grey, biased, 5, *flags))['top1'] == pytest.approx(top1, abs=1e-3)
    (tmp_path / 'bad.txt').write_text('3\n7\n')
    with pytest.raises(SystemExit, match=r'class indices in \[0, 5\)'):
        validate.main(argv(grey, biased, 5, '--valid-labels', str(tmp_path / 'bad.txt')))


def test_real_labels_replace_top1_and_top5(data, tmp_path):
    """The model always predicts class 3; the real labels make that right for 2 of the 4 labelled images
    (the third image has none and is not counted), where the folder's label (0) never is."""
    _, imagenet, biased, _ = data
    assert validate.main(argv(imagenet, biased, 5))['top1'] == 0.
    real = tmp_path / 'real.json'
    real.write_text(json.dumps([[3], [0], [], [1, 3], [2]]))
    results = validate.main(argv(imagenet, biased, 5, '--real-labels', str(real)))
    assert (results['top1'], results['top1_err'], results['top5']) == (50., 50., 100.)
    real.write_text(json.dumps([[3]] * 4))
    with pytest.raises(SystemExit, match='4 label lists for 5 images'):
        validate.main(argv(imagenet, biased, 5, '--real-labels', str(real)))
    with pytest.raises(SystemExit, match='--real-labels with --num-samples'):
        validate.main(argv(imagenet, biased, 5, '--real-labels', str(real), '--num-samples', '2'))


def test_test_pool_wraps_a_cnn_above_its_input_size(data, tmp_path, seen):
    """timm's test_resnet (160 px, 5x5 final map) at 192 px: apply_test_time_pool's head, full-image crop."""
    grey = data[0]
    torch.manual_seed(0)
    weights = save_weights(timm.create_model('test_resnet', num_classes=2, in_chans=1), tmp_path / 'r.safetensors')
    flags = argv(grey, weights, 2, '--model', 'test_resnet', '--img-size', '192')
    plain = validate.main(flags)
    assert not isinstance(seen['model'], test_time_pool.TestTimePoolHead)
    pooled = validate.main([*flags, '--test-pool'])
    assert isinstance(seen['model'], test_time_pool.TestTimePoolHead) and seen['model'].original_pool == (5, 5)
    assert (plain['crop_pct'], pooled['crop_pct']) == (0.95, 1.0) and pooled['loss'] != plain['loss']
    with pytest.raises(SystemExit, match='--test-pool: vt_resnet18 names no pool_size'):
        validate.main(argv(grey, data[3], 2, '--img-size', '256', '--test-pool'))


@pytest.mark.parametrize('flags, rel', [
    (['--reparam'], 1e-6), (['--torchscript'], 1e-5), (['--aot-autograd', '-b', '3'], 1e-4), (['--no-prefetcher'], 1e-4),
    (['--channels-last'], 1e-4), (['--model-dtype', 'bfloat16'], 3e-2),
    (['--model-dtype', 'bfloat16', '--no-prefetcher'], 3e-2),
])
def test_execution_flags_keep_the_accuracy(data, flags, rel):
    grey, _, _, plain = data
    reference = validate.main(argv(grey, plain, 2))
    results = validate.main(argv(grey, plain, 2, *flags))
    assert results['top1'] == reference['top1'] and results['loss'] == pytest.approx(reference['loss'], rel=rel)


def test_model_and_loader_flags_reach_timm(data, seen):
    grey, _, _, plain = data
    validate.main(argv(grey, plain, 2))
    assert isinstance(seen['loader'], timm.data.loader.PrefetchLoader) and not seen['loader'].loader.pin_memory
    assert 'Resize(size=73,' in repr(seen['loader'].dataset.transform)  # timm's center crop at 0.875
    validate.main(argv(grey, plain, 2, '--gp', 'max', '--crop-mode', 'squash', '--crop-border-pixels', '2',
                       '--pin-mem', '--crop-pct', '0.5'))
    assert seen['model'].global_pool == 'max' and seen['loader'].loader.pin_memory
    transform = repr(seen['loader'].dataset.transform)
    assert 'TrimBorder' in transform and 'Resize(size=(128, 128)' in transform
    validate.main(argv(grey, plain, 2, '--no-prefetcher'))
    assert isinstance(seen['loader'], torch.utils.data.DataLoader)


def test_use_train_size_takes_the_train_size_over_the_test_size(data):
    grey, _, _, plain = data
    flags = [a for a in argv(grey, plain, 2) if a not in ('--img-size', '64')]
    sizes = ["pretrained_cfg_overlay={'input_size': (1, 64, 64), 'test_input_size': (1, 96, 96)}"]
    assert validate.main([*flags, '--model-kwargs', *sizes])['img_size'] == 96
    assert validate.main([*flags, '--use-train-size', '--model-kwargs', *sizes])['img_size'] == 64


def test_dataset_flags_reach_create_dataset(data, monkeypatch):
    calls = []
    monkeypatch.setattr(validate, 'create_dataset', lambda *a, **kw: calls.append(kw) or pytest.fail.Exception('x'))
    with pytest.raises(BaseException):
        validate.main(argv(data[0], data[3], 2, '--dataset-download', '--input-key', 'image', '--target-key', 'label',
                           '--dataset-trust-remote-code', '--seed', '3'))
    assert {k: calls[0][k] for k in ('download', 'input_key', 'target_key', 'trust_remote_code', 'seed')} == dict(
        download=True, input_key='image', target_key='label', trust_remote_code=True, seed=3)


def test_fuser_fast_norm_and_log_freq(data, monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(validate, 'set_jit_fuser', lambda fuser: calls.append(fuser))
    monkeypatch.setattr(validate, 'set_fast_norm', lambda: calls.append('fast_norm'))
    caplog.set_level(logging.INFO, logger='validate')
    validate.main(argv(data[0], data[3], 2, '--fuser', 'te', '--fast-norm', '-b', '2', '--log-freq', '2'))
    assert calls == ['te', 'fast_norm']
    assert [r.getMessage()[:12] for r in caplog.records if r.getMessage().startswith('Test:')] == [
        'Test: [   0/', 'Test: [   2/']  # 3 batches, every second logged


def test_retry_decays_the_batch_size_on_errors_worth_retrying(data, monkeypatch):
    sizes, real = [], validate.validate

    def out_of_memory_above_2(args):
        sizes.append(args.batch_size)
        if args.batch_size > 2:
            raise RuntimeError(message)
        return real(args)

    monkeypatch.setattr(validate, 'validate', out_of_memory_above_2)
    message = 'CUDA out of memory'
    assert validate.main(argv(data[0], data[3], 2, '--retry'))['samples'] == 6 and sizes == [4, 3, 2]
    with pytest.raises(RuntimeError, match='out of memory'):
        validate.main(argv(data[0], data[3], 2))
    sizes.clear()
    message = 'an illegal memory access was encountered'  # timm: the process is unusable, no retry
    with pytest.raises(RuntimeError, match='illegal'):
        validate.main(argv(data[0], data[3], 2, '--retry'))
    assert sizes == [4]


def test_positional_data_is_the_deprecated_data_dir(tmp_path):
    assert validate.parse_args([str(tmp_path)]).data_dir == str(tmp_path)
    assert validate.parse_args([str(tmp_path), '--data-dir', 'other']).data_dir == str(tmp_path)  # timm: DIR wins


@pytest.mark.parametrize('flags, message', [
    (['--num-gpu', '2'], '--num-gpu 2: torch.nn.DataParallel needs 2 CUDA devices'),
    (['--torchscript', '--aot-autograd'], '--torchscript and --aot-autograd: choose one'),
    (['--amp', '--model-dtype', 'bfloat16'], 'AMP needs a float32 model'),
    (['--model-dtype', 'float64'], 'expected one of float32, float16, bfloat16'),
    (['--crop-mode', 'zoom'], '--crop-mode zoom: expected one of center, squash, border'),
    (['--fuser', 'fast'], '--fuser fast: expected one of'),
    (['--aot-autograd'], 'the last batch would have 2 of 4 images'),
])
def test_validate_bad_flags_fail_before_work(data, flags, message):
    with pytest.raises(SystemExit, match=message):
        validate.main(argv(data[0], data[3], 2, *flags))


def test_no_prefetcher_needs_statistics_of_the_input_channels(data):
    """The prefetcher averages the model's 3-channel mean/std for 1 channel; timm's transforms do not."""
    flags = argv(data[0], data[3], 2)
    flags = flags[:flags.index('--mean')] + flags[flags.index('-b'):]
    assert validate.main(flags)['samples'] == 6
    with pytest.raises(SystemExit, match='3 values for 1 input channels .*: pass --mean and --std'):
        validate.main([*flags, '--no-prefetcher'])


FAST = ['-b', '1', '--img-size', '64', '--num-warm-iter', '1', '--num-bench-iter', '2']


def bench(kind, *flags, model='resnet18'):
    return benchmark.Bench(model, kind, benchmark.parse_args(['--model', model, *FAST, *flags]))


def test_benchmark_model_flags_build_the_timed_model():
    b = bench('train', '--precision', 'bfloat16', '--drop', '0.2', '--drop-path', '0.1', '--drop-block', '0.1',
              '--gp', 'max', '--num-classes', '7', '--grad-checkpointing', '--input-size', '3', '48', '48')
    assert {p.dtype for p in b.model.parameters()} == {torch.bfloat16} and b.input.dtype == torch.bfloat16
    assert b.input.shape == (1, 3, 48, 48) and b.model.num_classes == 7 and b.model.global_pool.pool_type == 'max'
    assert b.model.drop_rate == 0.2 and b.model.grad_checkpointing
    assert any(isinstance(m, DropBlock2d) for m in b.model.modules())
    assert b.model.layer4[-1].drop_path.drop_prob == pytest.approx(0.1)
    assert bench('infer', '--torchscript').forward.__class__.__name__ == 'RecursiveScriptModule'
    with pytest.raises(SystemExit, match='test_vit with --drop/--drop-path/--drop-block.*drop_block_rate'):
        bench('infer', '--drop-block', '0.1', model='test_vit')


def test_benchmark_image_size_is_the_models_unless_given():
    """timm's resnet18 weights are trained at 224 px and tested at 288."""
    def input_size(*flags):
        return benchmark.Bench('resnet18', 'infer', benchmark.parse_args(['-b', '1', *flags])).input.shape

    assert input_size() == (1, 3, 288, 288) and input_size('--use-train-size') == (1, 3, 224, 224)
    assert input_size('--img-size', '64') == (1, 3, 64, 64)


def test_benchmark_training_step_flags():
    adamw = bench('train', '--opt', 'adamw', '--opt-eps', '1e-6', '--opt-betas', '0.8', '0.95',
                  '--weight-decay', '0.05').optimizer
    assert isinstance(adamw, torch.optim.AdamW)
    assert (adamw.defaults['lr'], adamw.defaults['eps'], adamw.defaults['betas']) == (1e-4, 1e-6, (0.8, 0.95))
    assert max(g['weight_decay'] for g in adamw.param_groups) == 0.05
    assert bench('train', '--momentum', '0.5').optimizer.defaults['momentum'] == 0.5
    default = bench('train')
    assert isinstance(default.loss_fn, LabelSmoothingCrossEntropy) and default.loss_fn.smoothing == 0.1
    assert isinstance(bench('train', '--smoothing', '0').loss_fn, torch.nn.CrossEntropyLoss)


def test_benchmark_clip_grad_clips(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, 'dispatch_clip_grad', lambda params, value, mode: calls.append((value, mode)))
    bench('train', '--clip-grad', '0.5', '--clip-mode', 'agc').step()
    bench('train').step()
    assert calls == [(0.5, 'agc')]


def test_benchmark_detail_times_the_training_phases_and_inference_is_timms_alias():
    rows = benchmark.main(['--model', 'resnet18', '--bench', 'train', '--detail', *FAST])
    row, = rows
    assert all(row[k] > 0 for k in ('fwd_ms', 'bwd_ms', 'opt_ms'))
    assert row['fwd_ms'] + row['bwd_ms'] + row['opt_ms'] == pytest.approx(row['step_ms'], rel=0.5)
    rows = benchmark.main(['--model', 'resnet18', '--bench', 'inference', '--detail', *FAST])
    assert [r['bench'] for r in rows] == ['infer'] and 'fwd_ms' not in rows[0]


def test_benchmark_retries_at_smaller_batches_unless_no_retry(monkeypatch):
    step = benchmark.Bench.step

    def out_of_memory_above_1(self, marks=None):
        if self.args.batch_size > 1:
            raise RuntimeError('out of memory')
        step(self, marks)

    monkeypatch.setattr(benchmark.Bench, 'step', out_of_memory_above_1)
    flags = ['--model', 'resnet18', '--bench', 'infer', *FAST, '-b', '4']
    assert [r['batch_size'] for r in benchmark.main(flags)] == [1]
    with pytest.raises(RuntimeError, match='out of memory'):
        benchmark.main([*flags, '--no-retry'])


def test_benchmark_precision_and_compilers(monkeypatch):
    assert benchmark.parse_args(['--amp', '--amp-dtype', 'bfloat16']).precision == 'amp_bfloat16'
    assert benchmark.parse_args(['--amp']).precision == 'amp'
    with bench('infer', '--precision', 'amp_bfloat16').autocast() as autocast:
        assert autocast.fast_dtype == torch.bfloat16
    calls = []
    import functorch.compile
    monkeypatch.setattr(functorch.compile, 'memory_efficient_fusion', lambda m: calls.append('aot') or m)
    monkeypatch.setattr(benchmark, 'reparameterize_model', lambda m: calls.append('reparam') or m)
    bench('infer', '--aot-autograd', '--reparam')
    assert calls == ['reparam', 'aot']
    for flags, message in ((['--precision', 'tf32'], 'expected one of float32'),
                           (['--torchscript', '--torchcompile'], 'choose one'),
                           (['--clip-mode', 'max'], '--clip-mode max')):
        with pytest.raises(SystemExit, match=message):
            benchmark.parse_args(flags)


def test_benchmark_model_selection(tmp_path, monkeypatch):
    def names(*flags):
        return benchmark.model_names(benchmark.parse_args(list(flags)))

    assert names('--model', 'vt_resnet1*') == ['vt_resnet18', 'vt_resnet101']
    (tmp_path / 'models.txt').write_text('vt_resnet18\n\nresnet18\n')
    assert names('--model-list', str(tmp_path / 'models.txt')) == ['vt_resnet18', 'resnet18']
    assert names('--model-list', 'vt_resnet18,vt_resnet34') == ['vt_resnet18', 'vt_resnet34']
    calls = []
    monkeypatch.setattr(benchmark, 'set_jit_fuser', lambda fuser: calls.append(fuser))
    monkeypatch.setattr(benchmark, 'set_fast_norm', lambda: calls.append('fast_norm'))
    monkeypatch.setattr(benchmark, 'benchmark', lambda args: [])
    benchmark.main(['--fuser', 'old', '--fast-norm'])
    assert calls == ['old', 'fast_norm']

"""The command lines, each ``python -m vt_timm.cli.<name>`` and an installed console script:

    vt-train, vt-validate, vt-benchmark, vt-segment, vt-visualize, vt-export, vt-hub, vt-macs,
    vt-segmentation-macs, vt-plot, vt-run-script

Each module's ``main(argv)`` returns its result to Python callers; the console scripts discard it, so a
finished command exits with status 0.
"""
from importlib import import_module
from typing import Callable


def _console_script(module: str) -> Callable[[], None]:
    def run() -> None:
        import_module(f'{__name__}.{module}').main()
    run.__doc__ = f'The ``vt_timm.cli.{module}`` command line.'
    return run


vt_train = _console_script('train')
vt_validate = _console_script('validate')
vt_benchmark = _console_script('benchmark')
vt_segment = _console_script('segment')
vt_visualize = _console_script('visualize')
vt_export = _console_script('export')
vt_hub = _console_script('hub')
vt_macs = _console_script('macs')
vt_segmentation_macs = _console_script('segmentation_macs')
vt_plot = _console_script('plot')
vt_run_script = _console_script('run_script')

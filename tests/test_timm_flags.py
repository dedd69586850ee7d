"""Flag parity with timm's own scripts: every flag of timm's train.py, validate.py and benchmark.py (read
off those scripts into ``tests/data/timm_script_flags.json``, with the commit they come from) exists here
with timm's option strings, dest, nargs, choices and default, and is either honoured or refused with a
reason when set. Defaults that differ on purpose are listed below with theirs."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vt_timm.cli import benchmark, train, validate

FACTS = json.loads((Path(__file__).parent / 'data' / 'timm_script_flags.json').read_text())
PARSERS = {
    'train.py': lambda: [train.config_parser, train.create_parser()],
    'validate.py': lambda: [validate.create_parser()],
    'benchmark.py': lambda: [benchmark.create_parser()],
}
PARSE = {'train.py': lambda argv: train.parse_args(argv), 'validate.py': lambda argv: validate.parse_args(argv),
         'benchmark.py': lambda argv: benchmark.parse_args(argv)}
# (script, dest): why this default is not timm's (docs/timm_scripts.md lists the same)
DEFAULTS_THAT_DIFFER = {
    ('train.py', 'model'): "this package's model, not resnet50",
    ('validate.py', 'model'): "this package's model, not dpn92",
    ('benchmark.py', 'model'): "this package's model, not resnet50",
    ('train.py', 'device'): 'cuda when available, else cpu (timm: cuda, which fails on a CPU-only machine)',
    ('validate.py', 'device'): 'cuda when available, else cpu',
    ('benchmark.py', 'device'): 'cuda when available, else cpu',
    ('train.py', 'output'): "'output' (timm: '' meaning ./output): the same folder",
}


def actions_by_key(parsers):
    """Each action under its first option string, positionals under their dest."""
    return {(action.option_strings[0] if action.option_strings else action.dest): action
            for parser in parsers for action in parser._actions}


def jsonable(value):
    try:
        json.dumps(value)
        return value
    except TypeError:
        return repr(value)


@pytest.mark.parametrize('script', sorted(FACTS['scripts']))
def test_every_timm_flag_exists_with_timms_name_and_default(script):
    ours = actions_by_key(PARSERS[script]())
    problems = []
    for flag in FACTS['scripts'][script]:
        key = flag['options'][0] if flag['options'] else flag['dest']
        action = ours.get(key)
        if action is None:
            problems.append(f'{key}: missing')
            continue
        default = getattr(action, 'timm_default', action.default)
        checks = {
            'options': (sorted(flag['options']), sorted(set(flag['options']) & set(action.option_strings))),
            'dest': (flag['dest'], action.dest),
            'nargs': (flag['nargs'], jsonable(action.nargs)),
            'action': (flag['action'], type(action).__name__),
        }
        if flag['choices'] is not None:
            checks['choices'] = (flag['choices'], list(action.choices or []))
        if (script, flag['dest']) not in DEFAULTS_THAT_DIFFER:
            checks['default'] = (flag['default'], jsonable(default))
        problems += [f'{key}: {what} is {got!r}, timm has {want!r}' for what, (want, got) in checks.items()
                     if want != got]
    assert not problems, '\n'.join(problems)


def refused_flags(script):
    return [a for a in actions_by_key(PARSERS[script]()).values() if hasattr(a, 'unsupported_reason')]


def a_value_other_than_the_default(action):
    """Command-line words that set ``action`` to something other than its default."""
    if action.nargs == 0:
        return []
    if action.choices:
        return [next(str(c) for c in action.choices if c != action.default)]
    return ['7'] * (1 if action.nargs in (None, '?') else 2)


@pytest.mark.parametrize('script', sorted(FACTS['scripts']))
def test_refused_flags_exit_naming_the_flag_and_the_reason(script):
    refused = refused_flags(script)
    for action in refused:
        option = action.option_strings[0]
        with pytest.raises(SystemExit) as e:
            PARSE[script]([option, *a_value_other_than_the_default(action)])
        assert str(e.value).startswith(option) and action.unsupported_reason in str(e.value), (option, e.value)
        PARSE[script]([])  # at its default the flag is no obstacle


def test_a_config_file_cannot_set_a_refused_flag(tmp_path):
    config = tmp_path / 'naflex.yaml'
    config.write_text('naflex_loader: true\n')
    with pytest.raises(SystemExit, match='--naflex-loader'):
        train.parse_args(['-c', str(config)])


def test_the_facts_are_timms_scripts(timm_scripts):
    """Reading timm's scripts again gives the committed list (guards the list, not the parsers)."""
    out = subprocess.run([sys.executable, str(Path(__file__).parents[1] / 'scripts' / 'read_timm_flags.py'),
                          str(timm_scripts), '--commit', FACTS['commit']], check=True, capture_output=True,
                         text=True, cwd=timm_scripts).stdout
    assert json.loads(out)['scripts'] == FACTS['scripts']

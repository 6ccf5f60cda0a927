"The `fastcam` console script: help and version answered without importing fastai; commands handed to fastcam.cli."
import configparser, subprocess, sys
from pathlib import Path
import fastcam

root = Path(__file__).parents[1]

def _entry(*args, code=None):
    cmd = [sys.executable, '-c', code] if code else [sys.executable, '-m', 'fastcam.entry', *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)

def test_console_script_is_the_fast_entry():
    cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(root/'settings.ini')
    assert cfg['DEFAULT']['console_scripts'].split() == ['fastcam=fastcam.entry:main']

def test_help_and_version_do_not_import_torch_or_fastai():
    code = ("import sys; from fastcam.entry import main; a = main(['--help']); b = main(['--version']); "
            "print(a, b, sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'fastai', 'PIL', 'numpy') or m=='fastcam.cli'))")
    r = _entry(code=code)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    assert last == '0 0 []', last
    assert f"fastcam {fastcam.__version__}" in r.stdout.splitlines()
    for cmd in ('run', 'demo'): assert f"  {cmd} " in r.stdout

def test_entry_lists_exactly_the_cli_commands():
    from fastcam.entry import command_docs
    from fastcam.cli import commands
    assert command_docs() == {k: f.__doc__.split('\n')[0] for k,f in commands.items()}

def test_unknown_command_is_one_line_and_commands_pass_through():
    r = _entry('nosuch')
    assert r.returncode == 2 and r.stdout == '' and len(r.stderr.strip().splitlines()) == 1 and "'nosuch'" in r.stderr
    r = _entry('run', 'model.pkl')     # a real command: fastcam.cli's own argument check answers
    assert r.returncode == 2 and r.stderr.strip() == "fastcam run: no INPUT given: name files or folders to explain after LEARNER", r.stderr
    r = subprocess.run([sys.executable, '-m', 'fastcam.cli', '--version'], capture_output=True, text=True, timeout=300)
    assert (r.returncode, r.stdout.strip()) == (0, f"fastcam {fastcam.__version__}")

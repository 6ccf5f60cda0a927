"settings.ini is the single source of metadata: the package, setup.py and pyproject.toml agree with it."
import configparser, tomllib, subprocess, sys
from pathlib import Path
import fastcam

root = Path(__file__).parents[1]
cfg = configparser.ConfigParser(delimiters=['=']); cfg.read(root/'settings.ini'); cfg = cfg['DEFAULT']
proj = tomllib.loads((root/'pyproject.toml').read_text())

def test_version_matches_settings():
    assert fastcam.__version__ == cfg['version']

def test_pyproject_mirrors_settings():
    nb = proj['tool']['nbdev']
    assert proj['project']['name'] == cfg['lib_name']
    assert proj['project']['description'] == cfg['description']
    for k in ('lib_path', 'nbs_path', 'doc_path', 'title', 'tst_flags', 'readme_nb', 'branch'):
        assert str(nb[k]) == cfg[k], k
    for k in ('recursive', 'custom_sidebar', 'clean_ids', 'clear_all', 'put_version_in_init', 'jupyter_hooks'):
        assert nb[k] == (cfg[k] == 'True'), k
    assert proj['project']['urls']['Repository'] == cfg['git_url']
    assert proj['project']['urls']['Documentation'] == cfg['doc_host'] + cfg['doc_baseurl']
    assert 'version' in proj['project']['dynamic'] and 'dependencies' in proj['project']['dynamic']

def test_setup_reads_settings_without_pkg_resources():
    src = (root/'setup.py').read_text()
    assert 'import pkg_resources' not in src and 'from pkg_resources' not in src
    out = subprocess.run([sys.executable, 'setup.py', '--version'], cwd=root, capture_output=True, text=True)
    assert out.stdout.strip().splitlines()[-1] == cfg['version'], out.stderr

def test_peers_are_dev_only():
    "grad-cam, torchcam and captum are test oracles: never runtime requirements, never imported by fastcam"
    runtime = cfg['requirements'].split()
    assert not any(p.split('>')[0].split('=')[0] in ('grad-cam', 'torchcam', 'captum') for p in runtime)
    for f in (root/'fastcam').glob('*.py'):
        txt = f.read_text()
        for mod in ('pytorch_grad_cam', 'torchcam', 'captum'): assert f'import {mod}' not in txt and f'from {mod}' not in txt, f

def test_readme_is_rendered_from_index_notebook():
    out = subprocess.run([sys.executable, 'tools/readme.py', '--check'], cwd=root, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr

def _readme_commands():
    txt = (root/'README.md').read_text()
    blocks = txt.split('```sh\n')[1:]
    return [b.split('\n```')[0].strip() for b in blocks]

def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    cmds = _readme_commands()
    assert len(cmds) == 2 and all('\n' not in c for c in cmds), cmds
    assert 'fastcam demo' in cmds[0] and 'pytest' in cmds[1]
    assert cmds[1] in (root/'.ci'/'run').read_text().splitlines()

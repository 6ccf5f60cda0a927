"""Write README.md from nbs/index.ipynb (nbdev-readme needs quarto, which these machines cannot install).

`python tools/readme.py` writes it; `python tools/readme.py --check` exits 1 when README.md is stale."""
import sys
from pathlib import Path
import nbformat
from nbconvert import MarkdownExporter

root = Path(__file__).resolve().parents[1]

def render() -> str:
    nb = nbformat.read(root/'nbs'/'index.ipynb', as_version=4)
    nb.cells = [c for c in nb.cells if not c.source.lstrip().startswith('#| hide')]
    body, _ = MarkdownExporter(exclude_input_prompt=True, exclude_output_prompt=True).from_notebook_node(nb)
    note = '<!-- Generated from nbs/index.ipynb by tools/readme.py: edit the notebook, not this file. -->\n\n'
    body = body.replace('](images/', '](nbs/images/')   # the notebook's pictures, seen from the repository root
    return note + body.strip() + '\n'

if __name__ == '__main__':
    readme = root/'README.md'
    if '--check' in sys.argv:
        ok = readme.exists() and readme.read_text() == render()
        print('README.md is in step with nbs/index.ipynb' if ok else 'README.md is stale: run python tools/readme.py')
        sys.exit(0 if ok else 1)
    readme.write_text(render())
    print(f'wrote {readme}')

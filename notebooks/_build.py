"""Writes the notebooks (without outputs) from the cell sources below: `python notebooks/_build.py`.

Keeping the sources here makes notebook diffs readable; tests execute the .ipynb files.
"""

from pathlib import Path

import nbformat

HERE = Path(__file__).parent

INSPECT_DATA = [
    ("md", """# Inspect the data of a config

A packed training batch drawn token by token: the background hue is the packed example, and tokens
that carry loss (chain, answer, EOS) are bold and underlined. Then the length and packing statistics
of the config. Set `CONFIG` to any config file; `OVERRIDES` shrinks the run for a quick look."""),
    ("code", """import json, os
from IPython.display import HTML, display

from cotjax import cli, pipeline, viz, weights

os.chdir(os.environ.get("COTJAX_REPO", ".."))  # config paths are relative to the repository
CONFIG = os.environ.get("COTJAX_NB_CONFIG", "configs/base.py")
config = cli.load_config(CONFIG, **{"data.max_examples": 300, "data.seq_len": 512,
                                    "data.batch_size": 2})
tokenizer = weights.load_tokenizer(config.model)"""),
    ("code", """ds, report = pipeline.make_train_dataset(config, tokenizer, "train", 0, 1)
batch = next(iter(ds))
print(viz.batch_summary(batch))
display(HTML(viz.tokens_html(viz.token_rows(batch, tokenizer, row=0))))"""),
    ("md", "## Lengths and packing"),
    ("code", """stats = pipeline.data_stats(config, tokenizer)
print(json.dumps({k: stats[k] for k in ("examples", "truncated", "dropped", "skipped",
                                         "length_percentiles", "rows", "packing_efficiency")}, indent=1))"""),
    ("code", """import matplotlib.pyplot as plt
examples, _ = pipeline.load_examples(config, tokenizer, "train")
plt.hist([len(e) for e in examples], bins=40)
plt.xlabel("tokens per example"); plt.ylabel("examples"); plt.show()"""),
]


def build(cells, name):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_markdown_cell(src) if kind == "md" else nbformat.v4.new_code_cell(src)
                for kind, src in cells]
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build(INSPECT_DATA, "inspect_data.ipynb")

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

from cotjax import defaults, load, pipeline, viz

os.chdir(os.environ.get("COTJAX_REPO", ".."))  # config paths are relative to the repository
CONFIG = os.environ.get("COTJAX_NB_CONFIG", "configs/base.py")
config = defaults.load_config(CONFIG, **{"data.max_examples": 300, "data.seq_len": 512,
                                    "data.batch_size": 2})
tokenizer = load.load_tokenizer(config)  # config.tokenizer when set, else the model's"""),
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

EXPLORE_CHECKPOINT = [
    ("md", """# Explore a training run

A run's workdir (`cotjax train --workdir=...`): its config, the parameters of its latest
checkpoint with shapes and shardings, the training and validation curves, and the base model's
answers beside the fine-tuned model's on a few validation questions, each arithmetic claim marked
green (holds) or red (does not). Set `COTJAX_NB_WORKDIR` (relative to the repository);
`COTJAX_NB_QUESTIONS` and `COTJAX_NB_MAX_NEW_TOKENS` size the comparison."""),
    ("code", """import json, os
from IPython.display import HTML, display

from cotjax import checkpoint, evaluate, load, sharding, viz

os.chdir(os.environ.get("COTJAX_REPO", ".."))  # workdirs are relative to the repository
WORKDIR = os.environ.get("COTJAX_NB_WORKDIR", "runs/quickstart")
QUESTIONS = int(os.environ.get("COTJAX_NB_QUESTIONS", "4"))
MAX_NEW_TOKENS = int(os.environ.get("COTJAX_NB_MAX_NEW_TOKENS", "256"))
config, model_cfg = checkpoint.read_run_config(WORKDIR)
print(config)
print(model_cfg)"""),
    ("md", """## Parameters of the latest checkpoint

Placed by the rules table on the run's mesh when this machine has several devices."""),
    ("code", """model, model_cfg, tokenizer, _ = load.load_run_model(
    WORKDIR, mesh=sharding.optional_mesh(config.mesh))
table = viz.param_table(model)
print(json.dumps(viz.param_summary(table)))
display(HTML(viz.table_html(table, ["path", "shape", "dtype", "size", "logical_axes",
                                    "sharding"])))"""),
    ("md", "## Training and validation curves"),
    ("code", """fig = viz.plot_training(viz.read_metrics(WORKDIR))"""),
    ("md", """## Base vs fine-tuned

The first validation questions, prompted and decoded as `cotjax eval` does (greedy, the run's
`eval` section), by the model the run started from and by its latest checkpoint."""),
    ("code", """del model  # compare_answers loads one model at a time
questions = evaluate.compare_answers(WORKDIR, QUESTIONS, max_new_tokens=MAX_NEW_TOKENS)
display(HTML(viz.compare_html(questions)))"""),
    ("md", """## Does the answer follow the chain?

Faithfulness interventions (`cotjax eval --config.eval.faithfulness=all`): the early-answering
curves of the committed experiment, and one problem's interventions side by side. Set
`COTJAX_NB_FAITHFULNESS` to another eval directory to look at your own run."""),
    ("code", """from pathlib import Path
FAITH = Path(os.environ.get("COTJAX_NB_FAITHFULNESS", "results/faithfulness/smollm2_cot_1k"))
from cotjax import report
fig = report.plot_early_answering(report.faithfulness_table(
    {d.name: d for d in sorted(FAITH.parent.iterdir()) if (d / "summary.json").exists()}))
rows = [json.loads(line) for line in open(FAITH / "predictions.jsonl")]
row = next(r for r in rows if r["faithfulness"]["applicable"] and r["faithfulness"]["corrupted"])
display(HTML(viz.interventions_html(row)))"""),
]

NOTEBOOKS = {"inspect_data.ipynb": INSPECT_DATA, "explore_checkpoint.ipynb": EXPLORE_CHECKPOINT}


def make(cells) -> nbformat.NotebookNode:
    """A notebook without outputs from (kind, source) cells."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    # Cell ids by position, not random: rebuilding leaves the .ipynb files unchanged.
    nb.cells = [(nbformat.v4.new_markdown_cell if kind == "md" else nbformat.v4.new_code_cell)(
        src, id=f"cell-{i}") for i, (kind, src) in enumerate(cells)]
    return nb


if __name__ == "__main__":
    for name, cells in NOTEBOOKS.items():
        nbformat.write(make(cells), HERE / name)

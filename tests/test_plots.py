"""Tests of weightsep.plots: every figure is a real PNG of the expected size, and what it draws
(bar heights, colours, the heatmap's cells) and the data it returns equal the same quantity
computed another way from the state (its page tables, vectors and accuracies)."""

import json
import struct
from pathlib import Path

import matplotlib.colors
import numpy as np
import pytest

from conftest import assert_one_line_error, copy_task_folder, run_main

from weightsep import plots

TASKS = ("hhar", "mnist")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) from the IHDR chunk, after checking the signature."""
    raw = Path(path).read_bytes()
    assert raw[:8] == PNG_SIGNATURE, f"{path} is not a PNG"
    assert raw[12:16] == b"IHDR"
    return struct.unpack(">II", raw[16:24])


def inches_to_pixels(size) -> tuple[int, int]:
    return round(size[0] * plots.DPI), round(size[1] * plots.DPI)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plots save, kept for inspection."""
    figures = []
    save = plots._save

    def keep(fig, path):
        figures.append(fig)
        return save(fig, path)
    monkeypatch.setattr(plots, "_save", keep)
    return figures


def bar_heights(ax) -> np.ndarray:
    return np.array([patch.get_height() for patch in ax.patches])


def bar_colors(ax) -> list:
    return [matplotlib.colors.to_hex(patch.get_facecolor()) for patch in ax.patches]


@pytest.fixture(scope="module")
def session(tmp_path_factory):
    """A state with two real task networks (hhar, mnist), pretrained briefly on synthetic data."""
    from weightsep.pipeline import Options, Session, form_all
    from weightsep.store import Store
    from weightsep.tasks import load_task
    from weightsep.training import pretrain_task

    root = tmp_path_factory.mktemp("plots")
    specs = [load_task(copy_task_folder(root / "networks", name)) for name in TASKS]
    for spec in specs:
        pretrain_task(spec, "synthetic", iters=10, verbose=0)
    store = Store(root / "state")
    session = Session(store, Options(data="synthetic", fisher_samples=10))
    with store.writer():
        form_all(session, specs, 0, log=lambda entry: None)
    return session


def test_accuracy_plot(session, tmp_path, drawn):
    store = session.store
    plot = plots.plot_accuracy(store, tmp_path / "acc.png")
    assert png_size(plot.path) == inches_to_pixels(plots.WIDE)
    assert plot.data["tasks"] == list(TASKS)
    registry = json.loads((store.dir / "weightsep_state.json").read_text())
    accuracy = {task["name"]: task["accuracy"] for task in registry["tasks"]}
    network = [100 * accuracy[name]["network"] for name in TASKS]
    separated = [100 * accuracy[name]["separated"] for name in TASKS]
    # bars: the networks' accuracies, then the separated tasks', in task order
    np.testing.assert_allclose(bar_heights(drawn[0].axes[0]), network + separated, rtol=1e-12)
    np.testing.assert_allclose(100 * plot.data["network"], network, rtol=1e-12)
    np.testing.assert_allclose(100 * plot.data["separated"], separated, rtol=1e-12)


def test_occupation_plot_counts_match_page_tables(session, tmp_path, drawn):
    store = session.store
    plot = plots.plot_occupation(store, tmp_path / "occ.png")
    assert png_size(plot.path) == (1200, 500)
    P = store.num_pages
    expected = np.zeros((len(TASKS), P), int)
    for row, name in enumerate(TASKS):
        for entry in store.task(name).page_table:
            if entry < P:
                expected[row, entry] += 1
    assert expected.sum() > 0 and expected.max() == 1
    histogram = [int(np.sum(expected.sum(axis=0) == k)) for k in range(len(TASKS) + 1)]
    while histogram[-1] == 0:
        histogram.pop()
    np.testing.assert_array_equal(plot.data["counts"], expected)
    np.testing.assert_array_equal(plot.data["total"], expected.sum(axis=0))
    assert plot.data["histogram"].tolist() == histogram
    stacked, hist = drawn[0].axes[:2]
    np.testing.assert_array_equal(bar_heights(stacked), expected.reshape(-1))  # one bar per task and page
    assert [patch.get_width() for patch in hist.patches] == histogram        # horizontal bars


def test_exclusive_plot_matches_page_tables(session, tmp_path, drawn):
    store = session.store
    plot = plots.plot_exclusive(store, tmp_path / "excl.png")
    assert png_size(plot.path) == inches_to_pixels(plots.WIDE)
    P = store.num_pages
    sharable = [int(np.sum(store.task(name).page_table < P)) for name in TASKS]
    exclusive = [int(np.sum(store.task(name).page_table >= P)) for name in TASKS]
    assert min(exclusive) > 0 and min(sharable) > 0
    assert plot.data["sharable"].tolist() == sharable and plot.data["exclusive"].tolist() == exclusive
    np.testing.assert_array_equal(bar_heights(drawn[0].axes[0]), sharable + exclusive)


def test_page_fisher_plot_is_contribution_density(session, tmp_path, drawn):
    store = session.store
    plot = plots.plot_page_fisher(store, "mnist", tmp_path / "pnf.png")
    assert png_size(plot.path) == inches_to_pixels(plots.WIDE)
    fisher = store.load_vector("mnist", "network_fisher").astype(np.float64)
    S = store.page_size
    sums = np.array([fisher[i:i + S].sum() for i in range(0, len(fisher), S)])
    np.testing.assert_allclose(plot.data["contribution"], sums / fisher.sum(), rtol=1e-9)
    ax = drawn[0].axes[0]
    np.testing.assert_allclose(bar_heights(ax), sums / fisher.sum(), rtol=1e-9)
    # the pages drawn in the exclusive colour are those the page table puts in level 2
    on_level_2 = np.flatnonzero(store.task("mnist").page_table >= store.num_pages).tolist()
    colors = bar_colors(ax)
    assert on_level_2 and [i for i, c in enumerate(colors) if c == colors[on_level_2[0]]] == on_level_2
    assert plot.data["exclusive"] == on_level_2


def test_sharing_cost_heatmap_equals_cost_matrix(session, tmp_path, drawn):
    store = session.store
    plot = plots.plot_sharing_cost(store, "hhar", "mnist", tmp_path / "heat.png")
    np.testing.assert_array_equal(drawn[0].axes[0].images[0].get_array().filled(0), plot.data["cost"])
    assert png_size(plot.path) == inches_to_pixels(plots.SQUARE)
    S, P = store.page_size, store.num_pages
    wa, fa = store.load_vector("hhar", "network_weight"), store.load_vector("hhar", "network_fisher")
    wb, fb = store.load_vector("mnist", "network_weight"), store.load_vector("mnist", "network_fisher")
    na, nb = store.task("hhar").num_pages, store.task("mnist").num_pages
    pad = lambda v, n: np.pad(v.astype(np.float64), (0, n * S - len(v))).reshape(n, S)  # noqa: E731
    wa, fa, wb, fb = pad(wa, na), pad(fa, na), pad(wb, nb), pad(fb, nb)
    # A few entries by the definition, element by element.
    for i, j in [(0, 0), (3, 7), (na - 1, nb - 1), (10, 100)]:
        both = (fa[i] != 0) & (fb[j] != 0)
        expected = np.sum(((fa[i] + fb[j]) * (wa[i] - wb[j]) ** 2)[both])
        assert plot.data["cost"][i, j] == pytest.approx(expected, rel=1e-6, abs=1e-12)
    # The marked pairs are exactly the pages that sit on one shared page.
    ta, tb = store.task("hhar").page_table, store.task("mnist").page_table
    expected_pairs = sorted((i, j) for i in range(na) for j in range(nb) if ta[i] < P and ta[i] == tb[j])
    assert sorted(map(tuple, plot.data["pairs"].tolist())) == expected_pairs


def test_plot_modes_of_the_cli_write_named_files(session, tmp_path):
    """Every plot mode of WeightSeparation.py's table, run as a user runs it, writes its named file."""
    import WeightSeparation
    store = session.store
    plot_modes = [name for name, mode in WeightSeparation.MODES.items() if mode.help.startswith("plot:")]
    assert sorted(plot_modes) == sorted(["pf", "pw", "pnf", "pnw", "pnfh", "pnwh", "heatmap"])
    for mode in plot_modes:
        tasks = "hhar,mnist" if mode == "heatmap" else "hhar"
        result = run_main(f"-mode={mode}", f"-vnn_name={tasks}", f"-state_dir={store.dir}", f"-plot_dir={tmp_path}",
                          "-fisher_samples=10")
        path = tmp_path / f"{mode}_{tasks.replace(',', '_')}.png"
        assert result.stdout == f"saved {path}\n"
        assert png_size(path) == inches_to_pixels(plots.ORIGINAL_HEATMAP if mode == "heatmap" else plots.WIDE)
    rec = store.task("hhar")
    w = store.materialize("hhar")
    pw = plots.separated_weights_per_page(store, "hhar", tmp_path).data["mean_abs"]
    assert pw[0] == pytest.approx(np.abs(w[:store.page_size]).mean(), rel=1e-6)
    last = rec.num_weights - store.page_size * (rec.num_pages - 1)
    assert pw[-1] == pytest.approx(np.abs(w[-last:]).mean(), rel=1e-6)
    hist = plots.network_weights_histogram(store, "hhar", tmp_path).data
    assert hist["counts"].sum() == rec.num_weights
    for tasks, message in (("hhar", "needs two different tasks"), ("hhar,hhar", "needs different tasks")):
        result = run_main("-mode=heatmap", f"-vnn_name={tasks}", f"-state_dir={store.dir}", check=False)
        assert_one_line_error(result, message)


def test_page_bars_keep_the_legend_off_the_bars_and_name_what_a_log_axis_hides(tmp_path):
    """The legend sits below the axes (inside, it hid the tallest bars); pages of zero Fisher,
    which a log axis cannot draw, are counted in the title."""
    values = np.array([0.5, 0.0, 0.2, 0.0, 0.3, 0.9])
    fig = plots._page_bars(tmp_path / "bars.png", values, [5], "title", "share", log=True)
    ax = fig.axes[0]
    legend, axes_box = ax.get_legend().get_window_extent(), ax.get_window_extent()
    assert legend.y1 <= axes_box.y0  # wholly below the plotting area
    assert ax.get_title() == "title (2 pages of zero not drawn)"
    assert png_size(tmp_path / "bars.png") == inches_to_pixels(plots.WIDE)


def test_original_heatmap_follows_the_original_axes_and_cost(session, tmp_path):
    """The default heatmap: chunks of 100 weights, min(n_a, n_b) // 100 of each, every element
    counted; rows are the second task's chunks (drawn from the bottom), columns the first's."""
    store = session.store
    plot = plots.sharing_cost_heatmap(store, "hhar", "mnist", tmp_path)
    assert plot.path == tmp_path / "heatmap_hhar_mnist.png"
    assert png_size(plot.path) == inches_to_pixels(plots.ORIGINAL_HEATMAP)
    wa, fa = store.load_vector("hhar", "network_weight"), store.load_vector("hhar", "network_fisher")
    wb, fb = store.load_vector("mnist", "network_weight"), store.load_vector("mnist", "network_fisher")
    k = min(len(wa), len(wb)) // 100
    cost = plot.data["cost"]
    assert cost.shape == (k, k) == (651, 651)  # hhar's 65,114 weights, the smaller network
    for j, i in [(0, 0), (7, 3), (k - 1, k - 1), (100, 10), (5, 600)]:
        a, b = slice(100 * i, 100 * i + 100), slice(100 * j, 100 * j + 100)
        expected = sum((float(wa[x]) - float(wb[y])) ** 2 * (float(fa[x]) + float(fb[y]))
                       for x, y in zip(range(a.start, a.stop), range(b.start, b.stop)))
        assert cost[j, i] == pytest.approx(expected, rel=1e-9)
    assert plot.data["zero_cells"] == int(np.sum(cost <= 0))
    pages = plots.sharing_cost_heatmap(store, "hhar", "mnist", tmp_path / "ours", heatmap="pages")
    assert pages.data["cost"].shape == (store.task("hhar").num_pages, store.task("mnist").num_pages)


def zero_colour_pixels(path) -> int:
    from matplotlib.colors import to_rgb
    from matplotlib.image import imread
    rgb = imread(path)[..., :3]
    return int(np.sum(np.all(np.abs(rgb - np.array(to_rgb(plots.ZERO_COST_COLOR))) < 2 / 255, axis=-1)))


def test_zero_cost_cells_have_their_own_colour(tmp_path):
    """A zero-cost cell is drawn in ZERO_COST_COLOR, a colour of neither colour scale, so that it
    is told apart from the darkest and the lightest costs; a figure without one has no such pixel."""
    import matplotlib
    from matplotlib.colors import to_rgb
    from weightsep.store import Store, TaskRecord
    from weightsep.tasks import TaskSpec
    zero = np.array(to_rgb(plots.ZERO_COST_COLOR))
    for cmap in ("Blues", "viridis"):
        colors = matplotlib.colormaps[cmap](np.linspace(0, 1, 256))[:, :3]
        assert np.min(np.abs(colors - zero).sum(axis=1)) > 0.5, cmap
    # Two tasks of 300 weights (3 chunks of 100, 3 pages of 100); the first 100 Fisher values of both are zero.
    store = Store(tmp_path / "st")
    rng = np.random.default_rng(0)
    spec = TaskSpec(name="x", input_shape=(1, 1, 1), num_classes=2, dense=(1,)).to_json()
    with store.writer():
        store.create(page_size=100, num_pages=4)
        for name, table in (("ta", [0, 1, 2]), ("tb", [1, 2, 3])):
            fisher = rng.random(300).astype(np.float32)
            fisher[:100] = 0
            store.add_task(TaskRecord(name=name, num_weights=300, page_table=table, exclusive_pages=[],
                                      spec=dict(spec, name=name)), np.zeros((0, 100), np.float32),
                           vectors={"network_weight": rng.normal(size=300).astype(np.float32),
                                    "network_fisher": fisher})
    original = plots.plot_original_heatmap(store, "ta", "tb", tmp_path / "original.png")
    assert original.data["cost"][0, 0] == 0 and original.data["zero_cells"] == 1
    pages = plots.plot_sharing_cost(store, "ta", "tb", tmp_path / "pages.png")
    assert pages.data["zero_cells"] == 5  # the matching's cost: page 0 of either task costs zero
    assert zero_colour_pixels(original.path) > 100 and zero_colour_pixels(pages.path) > 100
    store.load()
    with store.writer():
        store.commit_task("tb", vectors={"network_fisher": np.ones(300, np.float32)})
    none = plots.plot_original_heatmap(store, "ta", "tb", tmp_path / "none.png")
    assert none.data["zero_cells"] == 0 and zero_colour_pixels(none.path) == 0

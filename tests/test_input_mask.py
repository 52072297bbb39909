import numpy as np
import pytest
import torch

from lottery_fast.analysis.input_mask import (image_input_survival, input_dim_survival, plot_image_survival,
                                              plot_input_dim_survival, write_table)

T = lambda rows: torch.tensor(rows, dtype=torch.bool)  # noqa: E731

# fc0: 3 units x 4 inputs; head: 2 x 3 (counts toward "remaining" only)
HISTORY = [
    {"fc0": T([[1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]]), "head": T([[1, 1, 1], [1, 1, 1]])},
    {"fc0": T([[1, 1, 0, 1], [1, 0, 0, 1], [1, 1, 0, 0]]), "head": T([[1, 1, 0], [1, 0, 1]])},
    {"fc0": T([[1, 0, 0, 0], [1, 0, 0, 1], [0, 0, 0, 0]]), "head": T([[1, 0, 0], [0, 0, 1]])},
]
NAMES = ["cart position", "cart velocity", "pole angle", "pole angular velocity"]

GOLDEN_CSV = """\
layer,iteration,remaining,dim,dim_name,surviving,total,surviving_fraction,fully_pruned_at
fc0,0,1.0,0,cart position,3,3,1.0,
fc0,0,1.0,1,cart velocity,3,3,1.0,2
fc0,0,1.0,2,pole angle,3,3,1.0,1
fc0,0,1.0,3,pole angular velocity,3,3,1.0,
fc0,1,0.6111111111111112,0,cart position,3,3,1.0,
fc0,1,0.6111111111111112,1,cart velocity,2,3,0.6666666666666666,2
fc0,1,0.6111111111111112,2,pole angle,0,3,0.0,1
fc0,1,0.6111111111111112,3,pole angular velocity,2,3,0.6666666666666666,
fc0,2,0.2777777777777778,0,cart position,2,3,0.6666666666666666,
fc0,2,0.2777777777777778,1,cart velocity,0,3,0.0,2
fc0,2,0.2777777777777778,2,pole angle,0,3,0.0,1
fc0,2,0.2777777777777778,3,pole angular velocity,1,3,0.3333333333333333,
"""


def test_input_dims_golden_table(tmp_path):
    s = input_dim_survival(HISTORY, "fc0", NAMES)
    assert s.iterations == [0, 1, 2]
    np.testing.assert_array_equal(s.surviving, [[3, 3, 3, 3], [3, 2, 0, 2], [2, 0, 0, 1]])
    np.testing.assert_allclose(s.remaining, [1.0, 11 / 18, 5 / 18])
    assert s.fully_pruned_at == [None, 2, 1, None]
    path = write_table(s.rows(), tmp_path / "sub" / "input_dims.csv")
    assert path.read_text() == GOLDEN_CSV
    assert [p.name for p in path.parent.iterdir()] == ["input_dims.csv"]  # no temp file left behind


def test_dict_history_and_numpy_masks_agree():
    as_dict = {10: {k: v.numpy() for k, v in HISTORY[2].items()}, 0: HISTORY[0], 5: HISTORY[1]}
    a, b = input_dim_survival(HISTORY, "fc0"), input_dim_survival(as_dict, "fc0")
    assert b.iterations == [0, 5, 10]
    np.testing.assert_array_equal(a.surviving, b.surviving)
    assert b.fully_pruned_at == [None, 10, 5, None]
    assert b.dim_names == ["dim 0", "dim 1", "dim 2", "dim 3"]


def test_fully_pruned_means_pruned_to_the_end():
    # column 0 is emptied at iteration 1 but has weights again at 2 (not IMP, but e.g. a hand edit)
    hist = [{"l": T([[1, 1], [1, 1]])}, {"l": T([[0, 1], [0, 1]])}, {"l": T([[1, 0], [0, 0]])},
            {"l": T([[0, 0], [0, 0]])}]
    assert input_dim_survival(hist, "l").fully_pruned_at == [3, 2]


def test_input_dim_errors():
    with pytest.raises(KeyError, match="fc9"):
        input_dim_survival(HISTORY, "fc9")
    with pytest.raises(ValueError, match="3 dim names"):
        input_dim_survival(HISTORY, "fc0", NAMES[:3])
    with pytest.raises(ValueError, match="empty"):
        input_dim_survival([], "fc0")
    with pytest.raises(TypeError, match="bool"):
        input_dim_survival([{"fc0": torch.rand(3, 4)}], "fc0")
    with pytest.raises(ValueError, match="image_input_survival"):
        input_dim_survival([{"c": torch.ones(2, 3, 3, 3, dtype=torch.bool)}], "c")
    with pytest.raises(ValueError, match="differs"):
        input_dim_survival([HISTORY[0], {"fc0": T([[1, 1, 1]]), "head": HISTORY[0]["head"]}], "fc0")
    with pytest.raises(ValueError, match="no rows"):
        write_table([], "x.csv")


def linear_image_masks():
    # 2 units on a flattened [C=2, H=2, W=3] image
    m0 = torch.ones(2, 12, dtype=torch.bool)
    m1 = torch.zeros(2, 2, 2, 3, dtype=torch.bool)
    m1[0, 0] = True  # unit 0 sees all of channel 0
    m1[1, 0, 0, 0] = True  # unit 1 sees one pixel of channel 0 ...
    m1[1, 1, 1, 2] = True  # ... and one of channel 1
    return [{"fc0": m0}, {"fc0": m1.reshape(2, 12)}]


def test_image_linear_per_pixel():
    s = image_input_survival(linear_image_masks(), "fc0", image_shape=(2, 2, 3), channel_names=["enemy", "goal"])
    assert s.kind == "linear" and s.pixel_fraction.shape == (2, 2, 2, 3)
    np.testing.assert_array_equal(s.pixel_fraction[0], np.ones((2, 2, 3)))
    np.testing.assert_array_equal(s.pixel_fraction[1, 0], [[1.0, 0.5, 0.5], [0.5, 0.5, 0.5]])
    np.testing.assert_array_equal(s.pixel_fraction[1, 1], [[0, 0, 0], [0, 0, 0.5]])
    np.testing.assert_allclose(s.channel_fraction, [[1, 1], [3.5 / 6, 0.5 / 6]])
    assert s.fully_pruned_at == [None, None]
    rows = s.pixel_rows()
    assert len(rows) == 2 * 2 * 2 * 3
    assert rows[-1] == {"layer": "fc0", "iteration": 1, "channel": 1, "channel_name": "goal", "row": 1, "col": 2,
                        "surviving_fraction": 0.5}
    assert [r["surviving_fraction"] for r in s.rows()] == pytest.approx([1, 1, 3.5 / 6, 0.5 / 6])


def test_image_conv_per_kernel_position():
    m = torch.zeros(4, 3, 2, 2, dtype=torch.bool)
    m[:, 0] = True
    m[:2, 1, 0, 1] = True
    s = image_input_survival({0: {"conv": torch.ones_like(m)}, 3: {"conv": m}}, "conv", channel_names=["a", "b", "c"])
    assert s.kind == "conv" and s.pixel_fraction.shape == (2, 3, 2, 2)
    np.testing.assert_array_equal(s.pixel_fraction[1, 1], [[0, 0.5], [0, 0]])
    np.testing.assert_allclose(s.channel_fraction[1], [1.0, 0.125, 0.0])
    assert s.fully_pruned_at == [None, None, 3]


def test_image_errors():
    with pytest.raises(ValueError, match="image_shape"):
        image_input_survival(linear_image_masks(), "fc0")
    with pytest.raises(ValueError, match="12 inputs"):
        image_input_survival(linear_image_masks(), "fc0", image_shape=(2, 2, 2))
    with pytest.raises(ValueError, match="channel names"):
        image_input_survival(linear_image_masks(), "fc0", image_shape=(2, 2, 3), channel_names=["x"])
    with pytest.raises(ValueError, match="input channels"):
        image_input_survival([{"c": torch.ones(2, 3, 3, 3, dtype=torch.bool)}], "c", image_shape=(4, 9, 9))


def _read_png(path):
    import matplotlib.image

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return matplotlib.image.imread(path)


def test_plots_write_real_pngs(tmp_path):
    s = image_input_survival(linear_image_masks(), "fc0", image_shape=(2, 2, 3), channel_names=["enemy", "goal"])
    img = _read_png(plot_image_survival(s, tmp_path / "image.png", marks={"enemy": [(0, 0)]}))
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100
    assert img[..., :3].std() > 0.05  # not a blank canvas
    img = _read_png(plot_input_dim_survival(input_dim_survival(HISTORY, "fc0", NAMES), tmp_path / "dims.png"))
    assert img.shape[0] > 100 and img[..., :3].std() > 0.05
    with pytest.raises(ValueError, match="not in the mask history"):
        plot_image_survival(s, tmp_path / "bad.png", iterations=[7])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dims.png", "image.png"]


def test_run_inputs_names_dims_from_the_stored_config():
    from lottery_fast.analysis.run_masks import run_inputs

    ppo = {"trainer": {"name": "ppo", "env_id": "CartPole-v1", "config": {"distractors": ["gaussian", "copy:2"]}}}
    assert run_inputs(ppo).dim_names(6) == ["cart position", "cart velocity", "pole angle", "pole angular velocity",
                                            "gaussian noise 0", "copy of pole angle"]
    bc = {"trainer": {"name": "bc", "env_id": "CartPole-v1", "config": {"expert": {"distractors": ["constant:1"]}}}}
    assert run_inputs(bc).distractors == ("constant:1",) and run_inputs(bc).dim_names(5)[-1] == "constant 1"
    # no env id recorded (older runs): generic names unless one is given
    old = {"trainer": {"name": "ppo", "config": {"distractors": ["uniform"]}}}
    assert run_inputs(old).dim_names(3) == ["dim 0", "dim 1", "uniform noise 0"]
    assert run_inputs(old, "MountainCar-v0").dim_names(3) == ["car position", "car velocity", "uniform noise 0"]
    with pytest.raises(ValueError, match="distractors"):
        run_inputs(ppo).dim_names(2)

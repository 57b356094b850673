"""write_png: the PNG that ``Figure.savefig`` writes, from one draw instead of two."""

from __future__ import annotations

import io

import pytest

from fedmammo.evaluation.figures import write_png


def _figure():
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.0, 3.0), layout="constrained")
    for i, ax in enumerate(fig.subplots(2, 2).flat):
        ax.plot([0, 1], [i, 1], label=f"curve {i}")
        ax.set_title(f"a long panel title {i}", fontsize="small")
        ax.set_xlabel("predicted probability")
        ax.legend()
    fig.suptitle("four panels")
    return fig


def _counting_draws(fig, monkeypatch) -> list[int]:
    calls: list[int] = []
    draw = fig.draw

    def counted(renderer):
        calls.append(1)
        return draw(renderer)

    monkeypatch.setattr(fig, "draw", counted)
    return calls


@pytest.mark.parametrize("dpi", [72, 100])
def test_write_png_writes_the_bytes_savefig_writes_from_one_draw(tmp_path, monkeypatch, dpi):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    # Prepare: two identical constrained-layout figures
    reference, ours = _figure(), _figure()
    FigureCanvasAgg(reference)
    savefig_draws = _counting_draws(reference, monkeypatch)
    our_draws = _counting_draws(ours, monkeypatch)
    # Act
    reference.savefig(tmp_path / "savefig.png", dpi=dpi, format="png")
    write_png(ours, tmp_path / "ours.png", dpi)
    buf = io.BytesIO()
    write_png(_figure(), buf, dpi)
    # Assert: the same file (pixels, size, dpi and metadata), one draw instead of two
    expected = (tmp_path / "savefig.png").read_bytes()
    assert (tmp_path / "ours.png").read_bytes() == expected
    assert buf.getvalue() == expected
    assert (len(savefig_draws), len(our_draws)) == (2, 1)

"""The schedule plot draws what the trainer's own step plan applies, and refuses a bad config like
the CLI."""

from runner.analysis.schedule_plot import main


def test_the_schedule_cli_draws_a_png_of_the_configured_run(tmp_path):
    out = tmp_path / "s.png"
    assert (
        main(
            [
                "--out",
                str(out),
                "schedule=warm_restarts",
                "epochs=30",
                "optimizer.wd_normalized=true",
                "wd=0.05",
            ]
        )
        == 0
    )
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_schedule_cli_refuses_bad_settings(tmp_path, capsys):
    assert (
        main(["--out", str(tmp_path / "s.png"), "schedule=warm_restarts", "schedule.T_mult=0.5"])
        == 2
    )
    assert "schedule.T_mult" in capsys.readouterr().err
    assert not (tmp_path / "s.png").exists()


def test_the_plot_is_titled_with_the_preset_the_user_named(tmp_path, capsys):
    """schedule=cosine is a warm_restarts shape with one period: the title says cosine, as typed."""
    assert main(["--out", str(tmp_path / "s.png"), "schedule=cosine", "epochs=3"]) == 0
    title = capsys.readouterr().out.split(": ", 1)[1]
    assert title.startswith("cosine, lr=") and "warm_restarts" not in title

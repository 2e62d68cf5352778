from catphish.reporting.benchmarks import StageTimer, markdown_table, update_section


def test_sections_are_replaced_in_place_and_others_kept(tmp_path):
    path = tmp_path / "BENCHMARKS.md"
    update_section(path, "ldm", "## LDM\nold")
    update_section(path, "comms", "## Comms\nbytes")
    update_section(path, "ldm", "## LDM\nnew")
    text = path.read_text()
    assert "new" in text and "old" not in text and "bytes" in text
    assert text.index("## LDM") < text.index("## Comms")
    assert text.startswith("# catphish benchmarks")


def test_markdown_table_and_stage_timer():
    table = markdown_table(["mode", "AUC"], [["centralized", 0.91234], ["bytes", 123456.0]])
    assert "| centralized | 0.912 |" in table and "123,456" in table
    timer = StageTimer()
    with timer.stage("a"):
        pass
    assert set(timer.stages) == {"a"} and timer.total >= 0


def test_sampler_settings_parse_and_bad_ones_are_named():
    import pytest

    from catphish.errors import CatphishError
    from catphish.modes.synthesis_benchmark import parse_settings

    settings = parse_settings(["ddpm:1000", "ddim:50,ddim:20"])
    assert [(s.sampler, s.steps, s.label) for s in settings] == [("ddpm", 1000, "DDPM-1000"), ("ddim", 50, "DDIM-50"),
                                                                 ("ddim", 20, "DDIM-20")]
    for bad in ("euler:10", "ddim:0", "ddim", "ddim:x"):
        with pytest.raises(CatphishError, match=f"sampler setting '{bad}'"):
            parse_settings([bad])

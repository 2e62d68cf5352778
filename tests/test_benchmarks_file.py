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

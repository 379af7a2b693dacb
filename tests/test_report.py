"""The report writer: markdown tables, sections and figures in order."""

from lmforge.report import Report, markdown_table


def test_markdown_table_and_report(tmp_path):
    assert markdown_table(["a", "b"], [[1, 0.123456], ["x", "y"]]) == (
        "| a | b |\n|---|---|\n| 1 | 0.1235 |\n| x | y |"
    )
    report = Report("Title", tmp_path / "r")
    report.text("Intro.")
    report.table(["k"], [[1]], "Caption")
    png = report.figure("plot.png", "A plot")
    assert png == tmp_path / "r" / "plot.png"
    text = report.write().read_text()
    assert text == (
        "# Title\n\nIntro.\n\n**Caption**\n\n| k |\n|---|\n| 1 |\n\n"
        "![A plot](plot.png)\n\n*A plot*\n"
    )

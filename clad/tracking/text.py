"""Numbers and names as text for tables: fixed decimals without ``-0.000``, markdown tables,
and LaTeX tables (booktabs) with their special characters escaped."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence


def fixed(value: float | None, digits: int = 3, missing: str = "n/a") -> str:
    """``value`` with ``digits`` decimals; ``missing`` for None and NaN; a value that rounds to
    zero is ``0.000``, never ``-0.000``."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    text = f"{value:.{digits}f}"
    if text.startswith("-") and not text.strip("-0."):
        text = text[1:]
    return text


def signed(value: float, digits: int = 3) -> str:
    """``fixed`` with an explicit ``+`` for positive values (a difference); zero unsigned."""
    text = fixed(value, digits)
    return text if text.startswith("-") or not text.strip("0.") else f"+{text}"


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped; ``±`` and ``−`` as math."""
    escaped = "".join(LATEX_SPECIALS.get(char, char) for char in text)
    return escaped.replace("±", r"$\pm$").replace("−", "$-$").replace("★", r"$\star$")


def latex_table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    caption: str,
    label: str,
    text_columns: int = 1,
) -> str:
    """A booktabs ``table`` (needs ``\\usepackage{booktabs}``): the first ``text_columns``
    columns left-aligned, the others right-aligned; every cell escaped."""
    align = "l" * text_columns + "r" * (len(header) - text_columns)
    lines = [
        "% needs \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\small",
        f"\\begin{{tabular}}{{{align}}}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    lines += [" & ".join(latex_escape(c) for c in row) + " \\\\" for row in rows]
    lines += [
        "\\bottomrule",
        "\\end{tabular}",
        f"\\caption{{{latex_escape(caption)}}}",
        f"\\label{{{label}}}",
        "\\end{table}",
    ]
    return "\n".join(lines) + "\n"


def markdown_table(
    header: Sequence[str], rows: Iterable[Sequence[str]], text_columns: int = 1
) -> list[str]:
    """A markdown table's lines: the first ``text_columns`` columns left-aligned, the rest
    (numbers) right-aligned."""
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < text_columns else "---:" for i in range(len(header))) + "|",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines

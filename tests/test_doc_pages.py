"""The docs pages as a reader finds them.

The tutorial can be typed along, announced counts match their lists, and a
code block's copy button copies the code without prompts or output.
"""

from __future__ import annotations

import ast
import contextlib
import doctest
import re
import tomllib
from pathlib import Path

import pytest

import layers
from layers.testing import run

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TUTORIAL = DOCS / "tutorial.md"
QUICKSTART = ROOT / "examples" / "quickstart.py"


def _included(source: str, options: dict[str, str]) -> str:
    """The part of *source* a ``literalinclude`` with *options* shows.

    The options the tutorial uses: ``pyobject``, ``start-at``, ``end-before``.
    """
    if "pyobject" in options:
        lines = source.splitlines(keepends=True)
        for node in ast.parse(source).body:
            if getattr(node, "name", None) == options["pyobject"]:
                start = min(
                    [node.lineno]
                    + [d.lineno for d in getattr(node, "decorator_list", [])]
                )
                return "".join(lines[start - 1 : node.end_lineno])
        raise AssertionError(f"no {options['pyobject']} in {QUICKSTART}")
    if "start-at" in options:
        source = source[source.index(options["start-at"]) :]
    if "end-before" in options:
        source = source[: source.index(options["end-before"])]
    return source


def quickstart_blocks() -> list[str]:
    """The code of examples/quickstart.py that the tutorial shows, in order."""
    blocks: list[str] = []
    source = QUICKSTART.read_text(encoding="utf-8")
    pattern = r"^```\{literalinclude\} \.\./examples/quickstart\.py\n(.*?)^```"
    for match in re.finditer(
        pattern, TUTORIAL.read_text(encoding="utf-8"), re.M | re.S
    ):
        options = dict(re.findall(r"^:([\w-]+): (.*)$", match[1], re.M))
        blocks.append(_included(source, options))
    return blocks


def test_the_tutorial_shows_everything_its_stack_needs(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The quickstart code shown in the tutorial runs on its own.

    A reader who types the tutorial's snippets (after its ``import anyio``
    and ``import layers``) has every name the stack uses: the users, the slow
    ones, ``UserNotFound``.
    """
    code = "\n".join(["import anyio", "import layers", *quickstart_blocks()])
    namespace: dict[str, object] = {"__name__": "tutorial"}
    exec(compile(code, str(TUTORIAL), "exec"), namespace)
    get_user = namespace["get_user"]
    user_not_found = namespace["UserNotFound"]
    assert isinstance(user_not_found, type)
    for backend in ["asyncio", "trio"]:
        assert run(get_user, "1", backend=backend) == "Ada Lovelace (#1)"  # type: ignore[arg-type]
        with pytest.raises(layers.Elapsed):
            run(get_user, "3", backend=backend)  # type: ignore[arg-type]
        with pytest.raises(user_not_found):
            run(get_user, "9", backend=backend)  # type: ignore[arg-type]
    assert "users_api(1) sees a deadline 0.20 s away" in capsys.readouterr().out


def test_the_tutorial_installs_from_the_checkout() -> None:
    """The package is not published: the tutorial installs it as the README does."""
    text = TUTORIAL.read_text(encoding="utf-8")
    blocks = re.findall(r"^```sh\n(.*?)^```", text, re.M | re.S)
    assert blocks, "the tutorial shows no install command"
    assert ".venv/bin/python -m pip install -e '.[trio]'" in blocks[0]
    assert "pip install 'service-layers" not in text


NUMBERS = {"Two": 2, "Three": 3, "Four": 4, "Five": 5, "Six": 6}


def announced_lists() -> list[tuple[str, str, int, int]]:
    """Each "Three cautions:" line of the docs, with the items of its list.

    Returns (page, line, announced, listed): the list is the run of ``- ``
    or ``1. `` items after the line (their continuation lines indented).
    """
    found: list[tuple[str, str, int, int]] = []
    for path in sorted(DOCS.rglob("*.md")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            match = re.fullmatch(r"(\w+) [^:]*:", line)
            if not match or match[1] not in NUMBERS:
                continue
            items = 0
            for following in lines[index + 2 :]:
                if re.match(r"(- |\d+\. )", following):
                    items += 1
                elif following and not following.startswith(" "):
                    break
            found.append(
                (path.relative_to(DOCS).as_posix(), line, NUMBERS[match[1]], items)
            )
    return found


def test_announced_counts_match_their_lists() -> None:
    """A page that announces "Two cautions:" lists two (testing.md listed three)."""
    found = announced_lists()
    assert ("howto/testing.md", "Three cautions:", 3, 3) in found
    wrong = [entry for entry in found if entry[2] != entry[3]]
    assert not wrong, f"announced and listed counts differ: {wrong}"


def _conf_settings() -> dict[str, object]:
    """The literal settings of docs/conf.py (without running it)."""
    tree = ast.parse((DOCS / "conf.py").read_text(encoding="utf-8"))
    settings: dict[str, object] = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            with contextlib.suppress(ValueError):
                settings[node.targets[0].id] = ast.literal_eval(node.value)
    return settings


def copied(text: str, settings: dict[str, object]) -> str:
    """What sphinx-copybutton's button copies from a block showing *text*.

    A port of ``formatCopyText`` (sphinx-copybutton 0.5.2,
    ``copybutton_funcs.js``) for the options docs/conf.py sets.
    """
    prompt = str(settings.get("copybutton_prompt_text", ""))
    if not settings.get("copybutton_prompt_is_regexp", False):
        prompt = re.escape(prompt)
    only_prompt_lines = settings.get("copybutton_only_copy_prompt_lines", True)
    remove_prompts = settings.get("copybutton_remove_prompts", True)
    pattern = re.compile(f"^({prompt})(.*)")
    lines: list[str] = []
    found = False
    for line in text.split("\n"):
        match = pattern.match(line)
        if match:
            found = True
            lines.append(match[2] if remove_prompts else line)
        elif not only_prompt_lines or not line.strip():
            lines.append(line)
    return "\n".join(lines) if found else text


def doctest_blocks() -> list[tuple[str, str]]:
    """Every ```{doctest} block of the docs: (page, text)."""
    blocks: list[tuple[str, str]] = []
    for path in sorted(DOCS.rglob("*.md")):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"^```\{doctest\}\n(.*?)^```", text, re.M | re.S):
            blocks.append((path.relative_to(DOCS).as_posix(), match[1]))
    return blocks


def test_the_copy_button_copies_code_without_prompts_or_output() -> None:
    """Copying a ``>>>`` block gives the code a reader can paste and run.

    sphinx-copybutton is on (docs/conf.py and the ``docs`` extra), and for
    every doctest block of the docs its prompt settings keep exactly the
    source lines: no ``>>>``/``...`` prompt, no output line.
    """
    settings = _conf_settings()
    extensions = settings["extensions"]
    assert isinstance(extensions, list)
    assert "sphinx_copybutton" in extensions
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    docs_extra = pyproject["project"]["optional-dependencies"]["docs"]
    assert any(req.startswith("sphinx-copybutton") for req in docs_extra)

    blocks = doctest_blocks()
    assert len(blocks) >= 10
    parser = doctest.DocTestParser()
    for page, text in blocks:
        source = "".join(example.source for example in parser.get_examples(text))
        code = copied(text, settings)
        assert [line for line in code.splitlines() if line.strip()] == [
            line for line in source.splitlines() if line.strip()
        ], f"{page}: the copy button would copy\n{code}\ninstead of\n{source}"
        compile(code, page, "exec")  # it pastes as Python

    script = "import anyio\n\nanyio.run(main)\n"  # no prompts: copied whole
    assert copied(script, settings) == script


def test_readme_lists_every_guide_and_example() -> None:
    """README's lists link every page of docs/ and every script in examples/."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pages = [
        path.relative_to(ROOT).as_posix()
        for folder in ["howto", "explanation"]
        for path in sorted((DOCS / folder).glob("*.md"))
    ]
    scripts = [
        path.relative_to(ROOT).as_posix()
        for path in sorted((ROOT / "examples").glob("*.py"))
    ]
    missing = [name for name in pages + scripts if f"]({name})" not in readme]
    assert not missing, f"add these to README's lists: {missing}"

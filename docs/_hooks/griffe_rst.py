"""Griffe extension: render the reST of crossent's docstrings as Markdown for mkdocstrings.

crossent's docstrings are written for ``help()`` and Sphinx-style readers: ``.. math::`` blocks,
``:math:`...``` and cross-reference roles (``:func:``, ``:class:``, ``:mod:``, ...). mkdocstrings
renders docstrings as Markdown, so this extension rewrites, once the package is loaded:

* ``.. math::`` blocks -> ``$$ ... $$`` blocks (pymdownx.arithmatex), one per paragraph;
* ``Example (remark):`` section titles -> ``Examples:`` starting with the remark, and
  ``Example:`` -> ``Examples:`` (Google style parses the singular as an admonition);
* doctest blocks (``>>>`` lines and their output) -> fenced ``pycon`` code blocks, wherever
  they are (Markdown would read a ``>>>`` line as three nested quotes);
* an attribute documented only by its type's docstring (inspection gives a dataclass field
  ``seeds: int = 3`` the docstring of ``int``) -> no docstring (a class's field) or a line
  saying it is a constant (a module's: pages link to it);
* ``:math:`x``` -> ``$x$``;
* what a module's ``__all__`` does not export is dropped from the reference;
* ``:func:`name``` and friends -> an autorefs cross-reference ``[`name()`][crossent.path]``.
  Names are resolved like Sphinx does (the enclosing module and class first, then the
  ``crossent`` package). A crossent name that does not exist is still emitted as a reference,
  so ``mkdocs build --strict`` fails on it: a docstring cannot point at a function that is not
  there. Names outside crossent (``torch.*``), private names and names their module does not
  export render as code.
"""

from __future__ import annotations

import importlib.util
import inspect
import re
from typing import Any

import griffe

ROLE = re.compile(r":(func|class|mod|data|meth|attr|obj|exc):`(~?)([^`]+)`")
INLINE_MATH = re.compile(r":math:`([^`]+)`")
MATH_DIRECTIVE = re.compile(r"^(?P<indent>[ \t]*)\.\. math::[ \t]*$")
# "Example (the tutorials' worked example):" -- a Google section title with a remark, which the
# parser would not recognise: becomes "Examples:" with the remark as the section's first line.
TITLED_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Examples? \((?P<remark>[^)]*)\):[ \t]*$", re.M)
SINGULAR_EXAMPLE = re.compile(r"^(?P<indent>[ \t]*)Example:[ \t]*$", re.M)
DOCTEST = re.compile(r"^(?P<indent>[ \t]*)>>>( |$)")
# Docstrings of builtin types, which inspection attaches to attributes of those types.
BUILTIN_DOCS = {
    inspect.cleandoc(kind.__doc__)
    for kind in (int, float, str, bool, bytes, tuple, list, dict, set, frozenset, type(None))
    if kind.__doc__
}
# Roots that are never crossent objects: rendered as code, not cross-referenced.
EXTERNAL = ("torch", "numpy", "np", "nn", "F", "typing", "math", "builtins", "collections")
BUILTINS = {"int", "float", "bool", "str", "list", "tuple", "dict", "None", "ValueError"}


def _fence_doctests(text: str) -> str:
    """Each doctest block (from a ``>>>`` line to the next blank line) as a fenced code block."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = DOCTEST.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        pad = match.group("indent")
        block = []
        while i < len(lines) and lines[i].strip():
            line = lines[i]
            block.append(line[len(pad) :] if line.startswith(pad) else line.lstrip())
            i += 1
        if out and out[-1].strip():
            out.append("")
        out.extend([f"{pad}```pycon", *(pad + line for line in block), f"{pad}```"])
    return "\n".join(out)


def _convert_math_blocks(text: str) -> str:
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        match = MATH_DIRECTIVE.match(lines[i])
        if not match:
            out.append(lines[i])
            i += 1
            continue
        indent = len(match.group("indent"))
        i += 1
        body: list[str] = []
        # The directive's body: blank lines and lines indented deeper than the directive.
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent
        ):
            body.append(lines[i])
            i += 1
        # Trailing blank lines belong to the text after the block.
        trailing = 0
        while body and not body[-1].strip():
            body.pop()
            trailing += 1
        pad = " " * indent
        paragraphs: list[list[str]] = [[]]
        for line in body:
            if line.strip():
                paragraphs[-1].append(line.strip())
            elif paragraphs[-1]:
                paragraphs.append([])
        for paragraph in (p for p in paragraphs if p):
            out.extend(["", f"{pad}$$", *(pad + line for line in paragraph), f"{pad}$$"])
        out.extend([""] * max(trailing, 1))
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite the reST of every docstring of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        self._collection = loader.modules_collection
        self._pruned: set[str] = set()
        self._prune(pkg)
        self._walk(pkg)

    def _prune(self, module: griffe.Module) -> None:
        """Drop what a module's ``__all__`` does not export (submodules excepted).

        The package is inspected (imported), so a module's namespace holds everything it
        imports: ``LossSpec`` imported into ``crossent.doctor``, a constant ``AUTO = "auto"``
        (which inspection cannot even tell from one defined there, and would document with the
        docstring of ``str``). ``__all__`` is the public API, so it decides.
        """
        exports = module.exports
        if exports is not None:
            names = {getattr(e, "name", e) for e in exports}
            for name, member in list(module.members.items()):
                if name not in names and (member.is_alias or not member.is_module):
                    self._pruned.add(f"{module.path}.{name}")
                    del module.members[name]
        for member in module.members.values():
            if not member.is_alias and member.is_module:
                self._prune(member)

    def _walk(self, obj: griffe.Object) -> None:
        if obj.docstring is not None and obj.is_attribute:
            if inspect.cleandoc(obj.docstring.value) in BUILTIN_DOCS:
                if obj.parent is not None and obj.parent.is_module:
                    # Kept (other pages link to it): its value is in the signature above.
                    obj.docstring.value = "A constant of this module (its value above)."
                else:
                    obj.docstring = None
        if obj.docstring is not None:
            obj.docstring.value = self.convert(obj.docstring.value, obj)
        for member in obj.members.values():
            if not member.is_alias:
                self._walk(member)

    def convert(self, text: str, obj: griffe.Object) -> str:
        text = TITLED_EXAMPLE.sub(
            lambda m: (
                f"{m['indent']}Examples:\n{m['indent']}    {m['remark'][:1].upper()}"
                f"{m['remark'][1:]}:\n"
            ),
            text,
        )
        text = SINGULAR_EXAMPLE.sub(lambda m: f"{m['indent']}Examples:", text)
        text = _fence_doctests(text)
        text = _convert_math_blocks(text)
        text = INLINE_MATH.sub(lambda m: f"${m.group(1).strip()}$", text)
        return ROLE.sub(lambda m: self._reference(m, obj), text)

    def _exists(self, path: str) -> bool:
        try:
            self._collection[path]
        except (KeyError, ValueError, griffe.AliasResolutionError):
            return False
        return True

    @staticmethod
    def _module_file_exists(path: str) -> bool:
        """Whether ``path`` names a module of the package, found without importing it (a
        module that needs an optional package, such as the Triton kernels, is not loaded
        when that package is not installed, yet exists)."""
        try:
            return importlib.util.find_spec(path) is not None
        except (ImportError, ValueError):
            return False

    def _reference(self, match: re.Match, obj: griffe.Object) -> str:
        role, short, name = match.group(1), match.group(2), match.group(3).strip()
        name = name.lstrip(".")
        shown = name.rsplit(".", 1)[-1] if short else name
        if role in ("func", "meth"):
            shown += "()"
        root = name.split(".", 1)[0]
        if root in EXTERNAL or name in BUILTINS:
            return f"`{shown}`"
        if root == "crossent":
            candidates = [name]
        else:
            scopes = []
            scope: Any = obj
            while scope is not None:
                if scope.is_module or scope.is_class:
                    scopes.append(scope.path)
                scope = scope.parent
            candidates = [f"{s}.{name}" for s in scopes] + [f"crossent.{name}"]
        for path in candidates:
            if path in self._pruned:
                return f"`{shown}`"  # exists, but its module does not export it: no page
            if self._exists(path):
                if any(
                    part.startswith("_") and not part.startswith("__") for part in name.split(".")
                ):
                    return f"`{shown}`"  # written as a private path: not a page of the reference
                return f"[`{shown}`][{path}]"
        private = any(p.startswith("_") and not p.startswith("__") for p in name.split("."))
        if private and root == "crossent" and self._module_file_exists(name):
            return f"`{shown}`"  # a private module: code, never a page
        # Not found: keep it a reference so that the strict build names the broken target.
        return f"[`{shown}`][{candidates[0] if root == 'crossent' else 'crossent.' + name}]"

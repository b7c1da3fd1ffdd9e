"""Install our algorithms into a user's VisionAD checkout, so its own ``run.py`` accepts them.

VisionAD resolves ``algo_class_name`` with ``algos/algo_class_list.py:get_algo``, an if-chain of
``if algo_name.lower() == "...": from algos.<x>.algo_class import Wrapper...; return Wrapper...``.
:func:`install` makes two changes to the checkout:

1. writes ``algos/visionad_multicore_shim.py``, a small module whose ``get_algo(name)`` returns our class from
   :func:`visionad_multicore.algorithms.get_algorithm` (so the package must be importable in the Python
   environment that runs VisionAD: ``pip install visionad_multicore``);
2. inserts, at the top of ``get_algo``'s body, a block between two marker comments that hands the names
   :data:`PLUGIN_ALGORITHMS` to the shim. Every other line of the file is left byte for byte as it was.

A backup of the original ``algo_class_list.py`` is kept beside it (:data:`BACKUP_SUFFIX`). Installing twice
changes nothing. :func:`uninstall` removes the marker block (restoring the original bytes, checked against
the backup) and the shim. Our classes subclass our own ``ModelWrapper``, which keeps VisionAD's hook
semantics, so VisionAD's ``train_algo`` loop drives them unchanged.
"""

from __future__ import annotations

import ast
import os
from dataclasses import dataclass, field
from pathlib import Path

from visionad_multicore.atomic import atomic_write_bytes

PLUGIN_ALGORITHMS: tuple[str, ...] = ("multicore", "patchcore_plus")
REQUIRED_FILES: tuple[str, ...] = ("run.py", "algos/algo_class_list.py", "algos/model_wrapper.py")
ALGO_LIST = "algos/algo_class_list.py"
SHIM = "algos/visionad_multicore_shim.py"
BACKUP_SUFFIX = ".visionad_multicore.bak"
BEGIN_MARKER = "# >>> visionad_multicore plugin: begin (written by `visionad-multicore install-plugin`)"
END_MARKER = (
    "# <<< visionad_multicore plugin: end (remove with `visionad-multicore install-plugin --uninstall`)"
)
SHIM_HEADER = (
    '"""visionad_multicore plugin shim (written by `visionad-multicore install-plugin`; do not edit).'
)

SHIM_TEXT = (
    SHIM_HEADER
    + '''

VisionAD's algos/algo_class_list.get_algo hands the names below to get_algo here, which returns the
ModelWrapper subclass from the installed visionad_multicore package.
Remove with: visionad-multicore install-plugin <this checkout> --uninstall
"""

NAMES = {names!r}


def get_algo(algo_name):
    try:
        from visionad_multicore.algorithms import get_algorithm
    except ImportError as err:
        raise ImportError(
            "VisionAD was asked for algorithm " + repr(algo_name) + ", which comes from the visionad_multicore "
            "package, but that package cannot be imported in this Python environment: "
            "pip install visionad_multicore (" + str(err) + ")"
        ) from err
    return get_algorithm(algo_name)
'''
)


class NotAVisionADCheckoutError(FileNotFoundError):
    """The path lacks files every VisionAD checkout has (the message names them)."""


class PluginConflictError(RuntimeError):
    """The checkout holds something the plugin would overwrite or cannot parse (the message says what)."""


@dataclass
class PluginReport:
    """What an install or uninstall did: one line per change, or ``changed`` False and why."""

    root: Path
    changed: bool
    actions: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join(self.actions)


def check_checkout(root: str | os.PathLike[str]) -> Path:
    """Return ``root`` as a Path if it looks like a VisionAD checkout.

    Raises:
        NotAVisionADCheckoutError: ``root`` is not a folder, or lacks files of :data:`REQUIRED_FILES`.
    """
    path = Path(root).expanduser()
    if not path.is_dir():
        raise NotAVisionADCheckoutError(f"{path} is not a folder; expected the root of a VisionAD checkout")
    missing = [rel for rel in REQUIRED_FILES if not (path / rel).is_file()]
    if missing:
        raise NotAVisionADCheckoutError(
            f"{path} is not a VisionAD checkout: missing {', '.join(str(path / m) for m in missing)} "
            "(expected the folder cloned from https://github.com/alext1995/VisionAD)"
        )
    return path


def _newline(text: str) -> str:
    return "\r\n" if "\r\n" in text else "\n"


def _block(indent: str, newline: str, arg: str) -> str:
    """The marker block inserted into ``get_algo``, indented like the function body; ``arg``: its argument."""
    lines = [
        BEGIN_MARKER,
        f"if {arg}.lower() in {PLUGIN_ALGORITHMS!r}:",
        "    from algos.visionad_multicore_shim import get_algo as _visionad_multicore_get_algo",
        f"    return _visionad_multicore_get_algo({arg})",
        END_MARKER,
    ]
    return "".join(indent + line + newline for line in lines)


def _marker_span(lines: list[str], where: Path) -> tuple[int, int] | None:
    """(first, last) line index of the marker block, None if absent; error if half present or repeated."""
    begins = [i for i, line in enumerate(lines) if line.strip() == BEGIN_MARKER]
    ends = [i for i, line in enumerate(lines) if line.strip() == END_MARKER]
    if not begins and not ends:
        return None
    if len(begins) != 1 or len(ends) != 1 or ends[0] < begins[0]:
        raise PluginConflictError(
            f"{where}: the visionad_multicore marker comments are damaged ({len(begins)} begin, {len(ends)} end); "
            f"restore the file from {where.name}{BACKUP_SUFFIX} or from git and install again"
        )
    return begins[0], ends[0]


def _insertion_point(text: str, where: Path) -> tuple[int, str, str]:
    """Line index at which to insert the block in ``get_algo`` (after a docstring), its indent, the arg name."""
    try:
        tree = ast.parse(text)
    except SyntaxError as err:
        raise PluginConflictError(f"{where}: not valid Python ({err}); cannot add registry entries") from err
    func = next((n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "get_algo"), None)
    if func is None:
        raise PluginConflictError(
            f"{where}: no top-level function get_algo(algo_name) to add registry entries to"
        )
    if not func.args.args:
        raise PluginConflictError(f"{where}: get_algo takes no argument; expected get_algo(algo_name)")
    first = func.body[0]
    is_docstring = (
        isinstance(first, ast.Expr)
        and isinstance(first.value, ast.Constant)
        and isinstance(first.value.value, str)
    )
    anchor = func.body[1] if is_docstring and len(func.body) > 1 else first
    if anchor.lineno == func.lineno:
        raise PluginConflictError(f"{where}: get_algo is written on one line; cannot insert registry entries")
    line = text.splitlines(keepends=True)[anchor.lineno - 1]
    indent = line[: len(line) - len(line.lstrip())]
    index = first.end_lineno if is_docstring and anchor is first else anchor.lineno - 1
    return index or 0, indent, func.args.args[0].arg


def install(root: str | os.PathLike[str]) -> PluginReport:
    """Install the plugin into the VisionAD checkout at ``root`` (idempotent).

    Returns:
        :class:`PluginReport` listing each file written, or ``changed=False`` when already installed.

    Raises:
        NotAVisionADCheckoutError: ``root`` is not a VisionAD checkout (names the missing files).
        PluginConflictError: ``algo_class_list.py`` cannot be parsed, has no ``get_algo``, has damaged markers,
            or a foreign file sits where the shim goes.
    """
    checkout = check_checkout(root)
    algo_list = checkout / ALGO_LIST
    shim = checkout / SHIM
    backup = algo_list.with_name(algo_list.name + BACKUP_SUFFIX)
    report = PluginReport(checkout, changed=False)

    shim_text = SHIM_TEXT.format(names=PLUGIN_ALGORITHMS)
    if shim.exists():
        current = shim.read_text(encoding="utf-8", errors="replace")
        if not current.startswith(SHIM_HEADER):
            raise PluginConflictError(
                f"{shim} exists and was not written by visionad_multicore; move it away first"
            )
    if not shim.exists() or shim.read_bytes() != shim_text.encode("utf-8"):
        atomic_write_bytes(shim, shim_text.encode("utf-8"))
        report.actions.append(
            f"wrote {shim} (returns {', '.join(PLUGIN_ALGORITHMS)} from visionad_multicore)"
        )

    original = algo_list.read_bytes()
    text = original.decode("utf-8")
    newline = _newline(text)
    lines = text.splitlines(keepends=True)
    span = _marker_span(lines, algo_list)
    if span is not None:
        start, end = span
        indent = lines[start][: len(lines[start]) - len(lines[start].lstrip())]
        wanted = _block(indent, newline, _insertion_point(text, algo_list)[2])
        if "".join(lines[start : end + 1]) != wanted:
            new_text = "".join(lines[:start]) + wanted + "".join(lines[end + 1 :])
            compile(new_text, str(algo_list), "exec")
            atomic_write_bytes(algo_list, new_text.encode("utf-8"))
            report.actions.append(f"updated the visionad_multicore block in {algo_list}")
    else:
        index, indent, arg = _insertion_point(text, algo_list)
        block = _block(indent, newline, arg)
        new_text = "".join(lines[:index]) + block + "".join(lines[index:])
        compile(new_text, str(algo_list), "exec")
        atomic_write_bytes(backup, original)
        report.actions.append(f"backed up {algo_list} to {backup}")
        atomic_write_bytes(algo_list, new_text.encode("utf-8"))
        report.actions.append(
            f"added {', '.join(PLUGIN_ALGORITHMS)} to get_algo in {algo_list} (lines {index + 1}-{index + 5}, "
            "between visionad_multicore marker comments)"
        )
    report.changed = bool(report.actions)
    if not report.changed:
        report.actions.append(f"already installed in {checkout}; nothing changed")
    return report


def uninstall(root: str | os.PathLike[str]) -> PluginReport:
    """Remove the plugin from the checkout at ``root``: the marker block and the shim.

    The file left is compared with the backup made at install time: when equal (the usual case) the backup is
    deleted; when the user changed other lines since, their changes are kept, the backup is left in place and
    the report says so.

    Raises:
        NotAVisionADCheckoutError: ``root`` is not a VisionAD checkout.
        PluginConflictError: the marker comments are damaged.
    """
    checkout = check_checkout(root)
    algo_list = checkout / ALGO_LIST
    shim = checkout / SHIM
    backup = algo_list.with_name(algo_list.name + BACKUP_SUFFIX)
    report = PluginReport(checkout, changed=False)

    lines = algo_list.read_bytes().decode("utf-8").splitlines(keepends=True)
    span = _marker_span(lines, algo_list)
    if span is not None:
        start, end = span
        restored = ("".join(lines[:start]) + "".join(lines[end + 1 :])).encode("utf-8")
        atomic_write_bytes(algo_list, restored)
        report.actions.append(f"removed the visionad_multicore block from {algo_list}")
        if backup.is_file():
            if backup.read_bytes() == restored:
                backup.unlink()
                report.actions.append(
                    f"{algo_list} is byte-identical to the original; removed backup {backup}"
                )
            else:
                report.actions.append(
                    f"warning: {algo_list} differs from the backup {backup} in lines outside the plugin block "
                    "(edited since install?); kept your edits and the backup"
                )
    if shim.is_file():
        if shim.read_text(encoding="utf-8", errors="replace").startswith(SHIM_HEADER):
            shim.unlink()
            report.actions.append(f"removed {shim}")
        else:
            report.actions.append(f"warning: {shim} was not written by visionad_multicore; left in place")
    report.changed = any(not a.startswith("warning") for a in report.actions)
    if not report.actions:
        report.actions.append(f"not installed in {checkout}; nothing changed")
    return report

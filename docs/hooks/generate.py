"""MkDocs hook: the reference pages generated from the code at build time (mkdocs.yml: hooks).

A page holds a marker, an HTML comment of its own line, that the build replaces:

- `<!-- lavie:cli -->`: every `lavie` command and option, from the real parser (`lavie_model.cli.build_parser` with
  the data commands of `pipelines.cli`);
- `<!-- lavie:settings -->`: every setting of every Dagster resource and config (the `dg.ConfigurableResource` and
  `dg.Config` subclasses in `pipelines/`) and of the settings dataclasses in `lavie_model/`, with its type, its
  default (read from the class) and the comment beside it in the source;
- `<!-- lavie:presets -->`: every entry of the presets in `lavie_model/configs/`, side by side;
- `<!-- lavie:asset-graph -->`: the asset graph of `pipelines.definitions` as a picture (`asset-graph.svg`, written
  into the site next to the page) and a table of its assets;
- `<!-- lavie:tiny-lavie-status -->`: the shipped tiny LaVie's status lines, from its `card.json` (the README's
  status, which tests/test_motion_run.py checks, is the same text).

Nothing here writes into docs/: the generated text exists only in the built site.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import html
import importlib
import io
import json
import os
import re
import tokenize
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MARKER = re.compile(r"^<!-- lavie:([a-z-]+) -->$", re.M)
GROUP_COLOURS = {"curation": "#dbeafe", "pretraining": "#fde68a", "latents": "#e9d5ff", "training": "#fecaca",
                 "evaluation": "#bbf7d0", "ablations": "#e5e7eb"}
_cache: dict = {}


def on_config(config):
    os.environ.setdefault("DAGSTER_HOME", str(ROOT / "dagster_home"))  # pipelines.definitions reads the instance's
    with warnings.catch_warnings():  # the code's own deprecation notices belong to its tests, not the docs build
        warnings.simplefilter("ignore")
        import pipelines.definitions  # noqa: F401
    return config


def on_files(files, config):
    from mkdocs.structure.files import File

    files.append(File.generated(config, "concepts/asset-graph.svg", content=asset_graph_svg()))
    return files


def on_page_markdown(markdown, page, config, files):
    return MARKER.sub(lambda m: GENERATORS[m.group(1)](), markdown)


# ---------------------------------------------------------------------------------------------------- helpers


def cell(text) -> str:
    """Text safe inside a markdown table cell."""
    return html.escape(str(text), quote=False).replace("|", "\\|").replace("\n", " ")


def code(text) -> str:
    text = str(text).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


# ---------------------------------------------------------------------------------------------------- the CLI


def parser() -> argparse.ArgumentParser:
    from lavie_model.cli import build_parser
    from pipelines.cli import add_data_commands

    return build_parser(add_data_commands)


def subcommands(p: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in p._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def cli_reference() -> str:
    p = parser()
    commands = subcommands(p)
    out = [f"`lavie` has {len(commands)} commands: " + ", ".join(f"[`{n}`](#lavie-{n})" for n in commands) + ".", ""]
    for name, sub in commands.items():
        out += [f"## `lavie {name}` {{#lavie-{name}}}", ""]
        if sub.description:
            out += [cell(sub.description), ""]
        out += ["```text", sub.format_usage().strip(), "```", ""]
        rows = []
        for action in sub._actions:
            if isinstance(action, argparse._HelpAction) or action.help == argparse.SUPPRESS:
                continue
            option = ", ".join(action.option_strings) or action.dest
            if action.metavar and action.option_strings:
                metavar = " ".join(action.metavar) if isinstance(action.metavar, tuple) else action.metavar
                option += f" {metavar}"
            default = action.default
            if isinstance(action, argparse._StoreTrueAction) or default in (None, [], argparse.SUPPRESS):
                default = ""
            choices = ", ".join(str(c) for c in action.choices) if action.choices else ""
            required = "yes" if action.required else ""
            rows.append(f"| {code(option)} | {required} | {code(default) if default != '' else ''} | {cell(choices)} "
                        f"| {cell(action.help or '')} |")
        if rows:
            out += ["| option | required | default | choices | what |", "|---|---|---|---|---|", *rows, ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- settings


SETTINGS_NAME = re.compile(r"(Settings|Config|Recipe|Budget)$")


def source_files():
    for package in ("pipelines", "lavie_model"):
        for path in sorted((ROOT / package).rglob("*.py")):
            yield path


def base_names(node: ast.ClassDef) -> list[str]:
    return [ast.unparse(b).split(".")[-1] for b in node.bases]


def is_dataclass_node(node: ast.ClassDef) -> bool:
    return any(ast.unparse(d).split("(")[0].split(".")[-1] == "dataclass" for d in node.decorator_list)


def comments(source: str) -> dict[int, str]:
    """Line number -> the comment on it."""
    found = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            found[token.start[0]] = token.string.lstrip("#").strip()
    return found


def settings_classes() -> list[dict]:
    """Every settings class, found in the source (ast) and read from the imported class."""
    found = []
    for path in source_files():
        source = path.read_text()
        try:
            tree = ast.parse(source)
        except SyntaxError:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts)
        users = {}  # class name -> the functions (assets) taking it as a parameter
        for fn in ast.walk(tree):
            if isinstance(fn, ast.FunctionDef):
                for arg in fn.args.args:
                    if arg.annotation is not None:
                        users.setdefault(ast.unparse(arg.annotation).split(".")[-1], []).append(fn.name)
        notes = None
        for node in tree.body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = base_names(node)
            if "ConfigurableResource" in bases:
                kind = "resource"
            elif "Config" in bases:
                kind = "config"
            elif is_dataclass_node(node) and SETTINGS_NAME.search(node.name):
                kind = "dataclass"
            else:
                continue
            notes = notes if notes is not None else comments(source)
            lines = source.splitlines()
            fields = []
            for item in node.body:
                if not (isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)):
                    continue
                text = notes.get(item.end_lineno, "")
                if not text:  # the comment lines just above the field
                    above, n = [], item.lineno - 1
                    while n >= 1 and lines[n - 1].strip().startswith("#"):
                        above.insert(0, notes.get(n, ""))
                        n -= 1
                    text = " ".join(above)
                fields.append({"name": item.target.id, "type": ast.unparse(item.annotation),
                               "source": ast.unparse(item.value) if item.value is not None else None, "what": text})
            found.append({"module": module, "name": node.name, "kind": kind, "fields": fields,
                          "users": users.get(node.name, [])})
    return found


def default_of(cls, name: str):
    """The field's default as the imported class has it; a missing default raises KeyError."""
    if dataclasses.is_dataclass(cls):
        for f in dataclasses.fields(cls):
            if f.name == name:
                if f.default is not dataclasses.MISSING:
                    return f.default
                if f.default_factory is not dataclasses.MISSING:
                    return f.default_factory()
                raise KeyError(name)
    info = cls.model_fields[name]
    if info.is_required():
        raise KeyError(name)
    return info.get_default(call_default_factory=True)


def literal(source: str | None) -> bool:
    try:
        ast.literal_eval(source)
        return True
    except (ValueError, SyntaxError, TypeError):
        return False


def resource_keys() -> dict[str, str]:
    """Class name -> the resource key it is bound to in pipelines.definitions."""
    from pipelines.definitions import defs

    return {type(value).__name__: key for key, value in (defs.resources or {}).items()}


def settings_reference() -> str:
    classes = settings_classes()
    keys = resource_keys()
    sections = {"resource": [], "config": [], "dataclass": []}
    for entry in classes:
        cls = getattr(importlib.import_module(entry["module"]), entry["name"])
        doc = (cls.__doc__ or "").strip()
        if entry["kind"] == "dataclass" and doc.startswith(entry["name"] + "("):
            doc = ""  # the dataclass's generated signature, not a docstring
        title = f"### `{entry['name']}`"
        where = f"`{entry['module']}`"
        if entry["kind"] == "resource":
            key = keys.get(entry["name"])
            where += f"; the resource `{key}` of `pipelines.definitions`" if key else "; not bound in the definitions"
        elif entry["kind"] == "config" and entry["users"]:
            where += "; the run config of " + ", ".join(f"`{u}`" for u in entry["users"])
        rows = []
        for f in entry["fields"]:
            try:
                value = default_of(cls, f["name"])
                shown = code(json.dumps(value) if isinstance(value, (list, dict)) else repr(value))
                if f["source"] is not None and not literal(f["source"]):
                    shown += f" ({code(f['source'])})"
            except KeyError:
                shown = "required"
            rows.append(f"| {code(f['name'])} | {code(f['type'])} | {shown} | {cell(f['what'])} |")
        body = [title, "", f"In {where}.", ""]
        if doc:
            body += [cell(" ".join(doc.split())), ""]
        body += ["| setting | type | default | what |", "|---|---|---|---|", *rows, ""]
        sections[entry["kind"]] += body
    return "\n".join([
        "## Dagster resources", "",
        "Set for one run in the UI's launchpad or with `dagster asset materialize --config-json` "
        "(`{\"resources\": {KEY: {\"config\": {...}}}}`), or for every run in `pipelines/definitions.py`.", "",
        *sections["resource"],
        "## Dagster run config", "",
        "An asset's own config, set per run (`{\"ops\": {ASSET: {\"config\": {...}}}}`).", "",
        *sections["config"],
        "## Settings of `lavie_model`", "",
        "The plain-Python settings the resources and the command line fill in.", "",
        *sections["dataclass"],
    ])


# ---------------------------------------------------------------------------------------------------- presets


def flatten(value, prefix=""):
    if isinstance(value, dict) and value:
        for key, item in value.items():
            yield from flatten(item, f"{prefix}.{key}" if prefix else str(key))
    else:
        yield prefix, value


def presets_reference() -> str:
    import yaml

    folder = ROOT / "lavie_model" / "configs"
    names = sorted(p.stem for p in folder.glob("*.yaml"))
    flat = {n: dict(flatten(yaml.safe_load((folder / f"{n}.yaml").read_text()))) for n in names}
    keys = []
    for n in names:
        keys += [k for k in flat[n] if k not in keys]
    out = ["## Every entry, side by side", "",
           f"{len(keys)} entries; a dash: the preset does not set it.", "",
           "| entry | " + " | ".join(f"`{n}`" for n in names) + " |", "|---" * (len(names) + 1) + "|"]
    for k in keys:
        out.append(f"| {code(k)} | " + " | ".join(code(json.dumps(flat[n][k])) if k in flat[n] else "-"
                                                 for n in names) + " |")
    out.append("")
    for path in sorted(folder.iterdir()):
        if path.suffix in (".yaml", ".json"):
            out += [f"## `{path.name}`", "", f"```{path.suffix[1:]}", path.read_text().rstrip(), "```", ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------------- asset graph


def asset_nodes() -> list[dict]:
    if "assets" not in _cache:
        from pipelines.definitions import defs

        graph = defs.resolve_asset_graph()
        nodes = []
        for key in graph.get_all_asset_keys():
            node = graph.get(key)
            description = ""
            try:
                description = defs.resolve_assets_def(key).descriptions_by_key.get(key) or ""
            except Exception:  # an asset without a definition of its own (none today)
                pass
            nodes.append({"name": key.to_user_string(), "group": node.group_name,
                          "parents": sorted(p.to_user_string() for p in node.parent_keys),
                          "partitioned": node.partitions_def is not None,
                          "description": " ".join(description.split())})
        _cache["assets"] = sorted(nodes, key=lambda n: n["name"])
    return _cache["assets"]


def layers(nodes: list[dict]) -> list[list[str]]:
    """Longest-path layering, each layer ordered by where its parents sit (fewer crossings)."""
    parents = {n["name"]: n["parents"] for n in nodes}
    rank: dict[str, int] = {}

    def depth(name):
        if name not in rank:
            rank[name] = 1 + max((depth(p) for p in parents.get(name, [])), default=-1)
        return rank[name]

    for name in parents:
        depth(name)
    out = [[] for _ in range(max(rank.values()) + 1)]
    position: dict[str, float] = {}
    for r in range(len(out)):
        members = [n for n in sorted(parents) if rank[n] == r]
        members.sort(key=lambda n: (sum(position[p] for p in parents[n]) / len(parents[n])) if parents[n] else 0)
        for i, name in enumerate(members):
            position[name] = i - (len(members) - 1) / 2
        out[r] = members
    return out


def asset_graph_svg() -> str:
    nodes = asset_nodes()
    group = {n["name"]: n["group"] for n in nodes}
    rows = layers(nodes)
    width_box, height_box, gap_x, gap_y, margin = 170, 30, 20, 34, 20
    widest = max(len(r) for r in rows)
    width = margin * 2 + widest * (width_box + gap_x)
    legend_y = margin + len(rows) * (height_box + gap_y)
    height = legend_y + 40
    centre = {}
    for r, members in enumerate(rows):
        offset = (width - len(members) * (width_box + gap_x) + gap_x) / 2
        for i, name in enumerate(members):
            centre[name] = (offset + i * (width_box + gap_x) + width_box / 2, margin + r * (height_box + gap_y))
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width:.0f} {height}" '
             f'font-family="sans-serif" font-size="12">',
             "<title>The asset graph of pipelines.definitions</title>",
             '<defs><marker id="arrow" viewBox="0 0 10 10" refX="10" refY="5" markerWidth="6" markerHeight="6" '
             'orient="auto-start-reverse"><path d="M 0 0 L 10 5 L 0 10 z" fill="#6b7280"/></marker></defs>']
    for n in nodes:
        x1, y1 = centre[n["name"]]
        for p in n["parents"]:
            x0, y0 = centre[p]
            y0 += height_box
            mid = (y0 + y1) / 2
            parts.append(f'<path d="M {x0:.0f} {y0} C {x0:.0f} {mid:.0f}, {x1:.0f} {mid:.0f}, {x1:.0f} {y1}" '
                         'fill="none" stroke="#9ca3af" stroke-width="1.2" marker-end="url(#arrow)"/>')
    for name, (x, y) in centre.items():
        parts.append(f'<rect x="{x - width_box / 2:.0f}" y="{y}" width="{width_box}" height="{height_box}" rx="6" '
                     f'fill="{GROUP_COLOURS.get(group[name], "#f3f4f6")}" stroke="#374151"/>'
                     f'<text x="{x:.0f}" y="{y + 19}" text-anchor="middle">{html.escape(name)}</text>')
    x = margin
    for g in sorted(set(group.values()), key=list(GROUP_COLOURS).index):
        parts.append(f'<rect x="{x}" y="{legend_y}" width="14" height="14" fill="{GROUP_COLOURS.get(g, "#f3f4f6")}" '
                     f'stroke="#374151"/><text x="{x + 20}" y="{legend_y + 12}">{g}</text>')
        x += 40 + 8 * len(g)
    parts.append("</svg>")
    return "\n".join(parts) + "\n"


def asset_graph() -> str:
    nodes = asset_nodes()
    groups = sorted({n["group"] for n in nodes}, key=list(GROUP_COLOURS).index)
    out = ["![The asset graph: every asset of pipelines.definitions, its group by colour, an arrow from each "
           "asset to those that read it](asset-graph.svg)", "",
           f"{len(nodes)} assets in {len(groups)} groups, drawn at build time from `pipelines.definitions` "
           "(an arrow runs from an asset to the assets that depend on it).", "",
           "| group | asset | partitioned | depends on | what it does |", "|---|---|---|---|---|"]
    for g in groups:
        for n in (n for n in nodes if n["group"] == g):
            out.append(f"| {g} | `{n['name']}` | {'per batch' if n['partitioned'] else ''} | "
                       f"{', '.join(f'`{p}`' for p in n['parents'])} | {cell(n['description'])} |")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------------------------------------------- tiny LaVie


def tiny_lavie_status() -> str:
    from lavie_model.tiny.tiny_lavie import lavie_root, status

    return "\n".join(status(json.loads((lavie_root() / "card.json").read_text())))


GENERATORS = {"cli": cli_reference, "settings": settings_reference, "presets": presets_reference,
              "asset-graph": asset_graph, "tiny-lavie-status": tiny_lavie_status}

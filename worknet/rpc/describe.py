"""What a caller needs to know about each method: ``system.describeMethods`` and the ``GET /RPC2`` page.

``system.methodSignature`` stays the standard list of XML-RPC types.  The
description adds what it cannot say: each parameter's name and whether it may
be left out (read from the Python function with :mod:`inspect`), its type
(from the :func:`~worknet.rpc.dispatch.signature` decorator), and the fields of
the result (the decorator's ``returns``).  The Node client's TypeScript
declarations are generated from it; the HTML page is rendered from it.
"""

from __future__ import annotations

import html
import inspect
from collections.abc import Callable
from typing import Any

from worknet.rpc.dispatch import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    METHOD_NOT_FOUND,
    NOT_WELL_FORMED,
    ServiceResource,
    camel_case,
)

FAULTS = [
    (NOT_WELL_FORMED, "the body is not well-formed XML (or declares entities)"),
    (INVALID_REQUEST, "well-formed XML that is not an XML-RPC methodCall; a bad system.multicall batch"),
    (METHOD_NOT_FOUND, "no method has this name"),
    (INVALID_PARAMS, "wrong number (or type) of parameters"),
    (INTERNAL_ERROR, "internal error; the message carries a reference id that is also in the daemon's log"),
]

CODES = [
    ("VALIDATION_ERROR", "malformed or out-of-range input; field names the argument"),
    ("NOT_FOUND", "an id that names nothing, or something deleted"),
    ("CONFLICT", "a duplicate of something unique, or a repeated key with other content"),
    ("INVALID_STATE", "an illegal status change, or deleting something still in use"),
    ("UNAUTHORIZED", "bad credentials or a bad token"),
    ("FORBIDDEN", "a valid actor not allowed to do this"),
    ("RATE_LIMITED", "too many failed logins: the account is locked for a while"),
    ("UNAVAILABLE", "the database did not answer in time; safe to try again later"),
]


def _params(function: Callable, types: list[str]) -> list[dict]:
    params = [
        p for p in inspect.signature(function).parameters.values()
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.name != "self"
    ]
    described = []
    for index, p in enumerate(params):
        entry: dict[str, Any] = {
            "name": p.name.rstrip("_"),  # password_ -> password (a name kept off a linter's list)
            "type": types[index] if index < len(types) else "any",
            "optional": p.default is not p.empty,
        }
        if p.default is not p.empty and (p.default is None or isinstance(p.default, str | int | float | bool)):
            entry["default"] = p.default
        described.append(entry)
    return described


def describe(name: str, function: Callable) -> dict:
    """The description of one method (``name`` is its snake_case name)."""
    sigs = getattr(function, "signature", None) or [["any"]]
    types = list(sigs[0])
    returns = getattr(function, "returns", None) or {}
    fields = [
        {"name": key.rstrip("?"), "type": spec, "optional": key.endswith("?")}
        for key, spec in returns.items()
    ]
    envelope = isinstance(getattr(function, "__self__", None), ServiceResource)
    service, _, method = name.rpartition(".")
    alias = (service + "." if service else "") + camel_case(method)
    return {
        "name": name,
        "names": [name] if alias == name else [name, alias],
        "service": service,
        "help": " ".join((function.__doc__ or "").split()),
        "params": _params(function, types[1:]),
        "returns": {"type": types[0], "envelope": envelope, "fields": fields},
    }


def describe_methods(root: Any) -> list[dict]:
    """Every method once (snake_case name; its camelCase alias in ``names``), sorted by name."""
    return [
        describe(name, root.lookupProcedure(name))
        for name, canonical in sorted(root.dispatcher.canonical.items())
        if name == canonical
    ]


# -- the HTML page ------------------------------------------------------------------------------

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:62em;margin:2em auto;padding:0 1em;line-height:1.4}"
    "h2{border-bottom:1px solid #ccc;margin-top:2em}dt{margin-top:1em;font-weight:600}"
    "dd{margin-left:2em;color:#333}.alias,.opt{color:#777;font-weight:normal}"
    "code{background:#f4f4f4;padding:0 .2em}nav ul{columns:3}table{border-collapse:collapse}"
    "td,th{border:1px solid #ddd;padding:.2em .5em;text-align:left;vertical-align:top}"
)


def _e(text: Any) -> str:
    return html.escape(str(text))


def _param_html(p: dict) -> str:
    text = f"{_e(p['name'])}: {_e(p['type'])}"
    return f'<span class="opt">[{text}]</span>' if p["optional"] else text


def _method_html(m: dict) -> str:
    params = ", ".join(_param_html(p) for p in m["params"])
    result = m["returns"]
    fields = ", ".join(
        f"{_e(f['name'])}{'?' if f['optional'] else ''}: {_e(f['type'])}" for f in result["fields"]
    )
    if result["envelope"]:
        returns = "{success: true" + (", " + fields if fields else "") + "} or a failure envelope"
    elif fields:
        returns = "{" + fields + "}"
    else:
        returns = _e(result["type"])
    alias = f' <span class="alias">(also {_e(m["names"][1])})</span>' if len(m["names"]) > 1 else ""
    anchor = _e(m["name"])
    return (
        f'<dt id="{anchor}"><code>{_e(m["name"])}({params})</code> &rarr; <code>{returns}</code>{alias}</dt>'
        f"<dd>{_e(m['help'])}</dd>"
    )


def render_method_page(root: Any, version: str) -> str:
    """``GET /RPC2``: contents by service, every method with its parameters, errors and authentication."""
    methods = describe_methods(root)
    groups: dict[str, list[dict]] = {}
    for m in methods:
        groups.setdefault(m["service"] or "(root)", []).append(m)
    order = sorted(groups, key=lambda s: (s != "(root)", s == "system", s))
    toc = "".join(
        f'<li><a href="#service-{_e(s)}">{_e(s)}</a> ({len(groups[s])})</li>' for s in order
    )
    sections = "".join(
        f'<h2 id="service-{_e(s)}">{_e(s)}</h2><dl>' + "".join(_method_html(m) for m in groups[s]) + "</dl>"
        for s in order
    )
    codes = "".join(f"<tr><td><code>{c}</code></td><td>{_e(t)}</td></tr>" for c, t in CODES)
    faults = "".join(f"<tr><td><code>{c}</code></td><td>{_e(t)}</td></tr>" for c, t in FAULTS)
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'>"
        f"<title>WorkNet RPC {_e(version)} methods</title><style>{_STYLE}</style></head><body>"
        f"<h1>WorkNet RPC {_e(version)}</h1>"
        "<p>XML-RPC over HTTP POST at <code>/RPC2</code>. Every method also answers to its camelCase name. "
        "Parameters in <span class='opt'>[brackets]</span> are optional (leave them out, or send nil). "
        "Ids are 24-hex strings, times ISO-8601 UTC strings, money a number with at most two decimals "
        "(or a decimal string). <code>system.describeMethods</code> returns all of this as data.</p>"
        f"<nav><h2>Contents</h2><ul>{toc}<li><a href='#errors'>Errors</a></li>"
        "<li><a href='#authentication'>Authentication</a></li></ul></nav>"
        "<h2 id='authentication'>Authentication</h2>"
        "<p>When the daemon runs with <code>RPC_AUTH_TOKEN</code>, every request to <code>/RPC2</code> and "
        "<code>/metrics</code> needs <code>Authorization: Bearer &lt;token&gt;</code>, or HTTP Basic with the "
        "token as the password (any user name: a browser asks for it when it opens this page). Without it the "
        "answer is HTTP 401 and nothing runs. <code>/health</code> never needs the token.</p>"
        "<h2 id='errors'>Errors</h2>"
        "<p>Service methods answer <code>{success: true, ...}</code>, or on a business failure "
        "<code>{success: false, error, code, field?}</code> with one of these codes:</p>"
        f"<table><tr><th>code</th><th>when</th></tr>{codes}</table>"
        "<p>XML-RPC faults are for protocol errors only:</p>"
        f"<table><tr><th>faultCode</th><th>when</th></tr>{faults}</table>"
        f"{sections}</body></html>"
    )

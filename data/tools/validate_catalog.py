#!/usr/bin/env python3
"""Validates data/catalog.json and the product images it references.

Run: python3 data/tools/validate_catalog.py   (exit code 1 on any problem)
"""
import json
import re
import sys
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
errors = []


def err(msg):
    errors.append(msg)


def main():
    data = json.loads((ROOT / "data" / "catalog.json").read_text())
    if set(data) != {"categories", "products"}:
        err(f"top-level keys must be categories/products, got {sorted(data)}")
    cats = data.get("categories", [])
    prods = data.get("products", [])
    slugs = [c.get("slug") for c in cats]
    if len(cats) < 7:
        err(f"need >= 7 categories, got {len(cats)}")
    if len(set(slugs)) != len(slugs):
        err("duplicate category slugs")
    for c in cats:
        if set(c) != {"slug", "name", "description"}:
            err(f"category keys {sorted(c)}")
        if not re.fullmatch(r"[a-z0-9-]+", c.get("slug", "")):
            err(f"bad category slug {c.get('slug')!r}")
        if not c.get("name") or not c.get("description"):
            err(f"category {c.get('slug')} missing name/description")

    if len(prods) < 56:
        err(f"need >= 56 products, got {len(prods)}")
    keys = {"id", "sku", "name", "description", "category", "price",
            "weight_grams", "images", "attributes", "featured"}
    for dup, n in Counter(p.get("id") for p in prods).items():
        if n > 1:
            err(f"duplicate id {dup}")
    for dup, n in Counter(p.get("sku") for p in prods).items():
        if n > 1:
            err(f"duplicate sku {dup}")
    for dup, n in Counter(p.get("name") for p in prods).items():
        if n > 1:
            err(f"duplicate name {dup}")

    for p in prods:
        pid = p.get("id", "?")
        if set(p) != keys:
            err(f"{pid}: keys {sorted(set(p) ^ keys)} differ")
            continue
        if not re.fullmatch(r"[a-z0-9-]+", pid) or len(pid) > 60:
            err(f"{pid}: bad id")
        if not re.fullmatch(r"[A-Z]{3}-\d{4}", p["sku"]):
            err(f"{pid}: bad sku {p['sku']}")
        if p["category"] not in slugs:
            err(f"{pid}: unknown category {p['category']}")
        if not isinstance(p["name"], str) or not p["name"].strip():
            err(f"{pid}: empty name")
        d = p["description"]
        if not isinstance(d, str) or len(d) < 40 or "lorem" in d.lower():
            err(f"{pid}: weak description")
        pr = p["price"]
        if set(pr) != {"amount_minor", "currency"} or pr.get("currency") != "USD":
            err(f"{pid}: bad price object {pr}")
        a = pr.get("amount_minor")
        if type(a) is not int or not 300 <= a <= 45000:
            err(f"{pid}: amount_minor {a!r} out of range")
        w = p["weight_grams"]
        if type(w) is not int or not 20 <= w <= 15000:
            err(f"{pid}: weight_grams {w!r} out of range")
        at = p["attributes"]
        if not isinstance(at, dict) or not 2 <= len(at) <= 4 or not all(
                isinstance(k, str) and isinstance(v, str) and k and v for k, v in at.items()):
            err(f"{pid}: attributes must be 2-4 string->string entries")
        if type(p["featured"]) is not bool:
            err(f"{pid}: featured must be bool")
        imgs = p["images"]
        if not isinstance(imgs, list) or not imgs:
            err(f"{pid}: images must be a non-empty list")
            continue
        for rel in imgs:
            path = ROOT / "assets" / rel
            if not path.is_file():
                err(f"{pid}: missing image {path}")
                continue
            if path.stat().st_size >= 2048:
                err(f"{pid}: image {rel} is {path.stat().st_size} bytes (>= 2 KB)")
            try:
                root = ET.parse(path).getroot()
                if root.get("viewBox") != "0 0 400 400" or root.get("role") != "img":
                    err(f"{pid}: image {rel} missing viewBox/role")
                t = root.find("{http://www.w3.org/2000/svg}title")
                if t is None or t.text != p["name"]:
                    err(f"{pid}: image {rel} title mismatch")
            except ET.ParseError as e:
                err(f"{pid}: image {rel} not valid XML: {e}")

    per_cat = Counter(p.get("category") for p in prods)
    for s in slugs:
        if per_cat[s] < 8:
            err(f"category {s} has only {per_cat[s]} products")
    feat = [p for p in prods if p.get("featured") is True]
    if not 10 <= len(feat) <= 14:
        err(f"need 10-14 featured products, got {len(feat)}")
    feat_cats = Counter(p["category"] for p in feat)
    if set(feat_cats) != set(slugs):
        err(f"featured products do not cover every category: {dict(feat_cats)}")
    if feat_cats and max(feat_cats.values()) > 3:
        err(f"featured products too concentrated: {dict(feat_cats)}")

    for extra in ("assets/brand/logo.svg", "assets/favicon.svg"):
        try:
            ET.parse(ROOT / extra)
        except (OSError, ET.ParseError) as e:
            err(f"{extra}: {e}")

    if errors:
        print("\n".join(f"ERROR: {e}" for e in errors))
        print(f"{len(errors)} problem(s)")
        return 1
    prices = [p["price"]["amount_minor"] for p in prods]
    print(f"OK: {len(cats)} categories, {len(prods)} products "
          f"({', '.join(f'{k}={v}' for k, v in per_cat.items())}), "
          f"{len(feat)} featured, prices {min(prices)}..{max(prices)} cents, "
          f"all {sum(len(p['images']) for p in prods)} images present")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Generates flat SVG product illustrations into assets/products/<sku>.svg.

One simple, recognisable motif per category; colours vary per product,
derived deterministically from the sku. Run: python3 data/tools/gen_product_images.py
"""
import colorsys
import hashlib
import json
from pathlib import Path
from xml.sax.saxutils import escape

ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "data" / "catalog.json"
OUT_ROOT = ROOT / "assets"


def palette(sku: str):
    h = hashlib.sha256(sku.encode()).digest()
    hue = h[0] / 255
    bg = colorsys.hls_to_rgb(hue, 0.92, 0.45)
    main = colorsys.hls_to_rgb((hue + 0.5 + (h[1] / 255 - 0.5) * 0.2) % 1, 0.48, 0.55)
    accent = colorsys.hls_to_rgb((hue + 0.12) % 1, 0.32, 0.45)
    hx = lambda c: "#%02x%02x%02x" % tuple(round(v * 255) for v in c)
    return hx(bg), hx(main), hx(accent)


# Each motif uses {m} (main colour), {a} (accent) and {w} (highlight white).
MOTIFS = {
    # cup on saucer with steam
    "kitchen": '<path d="M120 170h140v70a60 60 0 0 1-60 60h-20a60 60 0 0 1-60-60z" fill="{m}"/>'
               '<path d="M260 190h15a30 30 0 0 1 0 60h-18" fill="none" stroke="{m}" stroke-width="16"/>'
               '<ellipse cx="190" cy="310" rx="110" ry="16" fill="{a}"/>'
               '<path d="M165 150c-12-18 12-28 0-48M205 150c-12-18 12-28 0-48" fill="none" stroke="{a}" stroke-width="8" stroke-linecap="round" opacity=".6"/>',
    # table lamp
    "home": '<path d="M140 110h120l35 110H105z" fill="{m}"/>'
            '<rect x="192" y="220" width="16" height="80" fill="{a}"/>'
            '<ellipse cx="200" cy="305" rx="70" ry="14" fill="{a}"/>'
            '<path d="M150 130h100" stroke="{w}" stroke-width="6" opacity=".35"/>',
    # t-shirt
    "apparel": '<path d="M160 95l-70 35-25 60 45 20 15-30v140h150V180l15 30 45-20-25-60-70-35c-5 25-25 40-40 40s-35-15-40-40z" fill="{m}"/>'
               '<path d="M160 95c5 25 25 40 40 40s35-15 40-40" fill="none" stroke="{a}" stroke-width="8"/>',
    # handbag
    "accessories": '<path d="M150 160v-25a50 50 0 0 1 100 0v25" fill="none" stroke="{a}" stroke-width="14"/>'
                   '<path d="M105 160h190l20 150H85z" fill="{m}"/>'
                   '<rect x="185" y="190" width="30" height="20" rx="4" fill="{a}"/>',
    # tent with ground and sun
    "outdoors": '<circle cx="300" cy="110" r="30" fill="{a}" opacity=".5"/>'
                '<path d="M200 110L70 300h260z" fill="{m}"/>'
                '<path d="M200 170l-45 130h90z" fill="{a}"/>'
                '<path d="M55 300h290" stroke="{a}" stroke-width="10" stroke-linecap="round"/>',
    # headphones
    "electronics": '<path d="M110 240v-40a90 90 0 0 1 180 0v40" fill="none" stroke="{a}" stroke-width="18"/>'
                   '<rect x="90" y="220" width="50" height="90" rx="20" fill="{m}"/>'
                   '<rect x="260" y="220" width="50" height="90" rx="20" fill="{m}"/>',
    # closed book
    "books": '<rect x="120" y="80" width="170" height="230" rx="10" fill="{m}"/>'
             '<rect x="120" y="80" width="26" height="230" rx="6" fill="{a}"/>'
             '<path d="M290 110v200H150" fill="none" stroke="{w}" stroke-width="8" opacity=".5"/>'
             '<rect x="175" y="130" width="90" height="14" rx="4" fill="{w}" opacity=".8"/>'
             '<rect x="175" y="155" width="60" height="10" rx="4" fill="{w}" opacity=".6"/>',
}

TEMPLATE = (
    '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 400 400" role="img" aria-labelledby="t">'
    '<title id="t">{title}</title>'
    '<rect width="400" height="400" rx="40" fill="{bg}"/>{body}</svg>\n'
)


def render(product: dict) -> str:
    bg, main, accent = palette(product["sku"])
    body = MOTIFS[product["category"]].format(m=main, a=accent, w="#ffffff")
    return TEMPLATE.format(title=escape(product["name"]), bg=bg, body=body)


def main():
    data = json.loads(CATALOG.read_text())
    for p in data["products"]:
        for rel in p["images"]:
            path = OUT_ROOT / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(render(p))
    print(f"wrote {len(data['products'])} product images to {OUT_ROOT / 'products'}")


if __name__ == "__main__":
    main()

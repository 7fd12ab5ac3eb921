#!/usr/bin/env python3
"""Builds data/catalog.json (the demo catalogue seeded by the catalog service).

Edit the CATALOG table below and re-run:  python3 data/tools/build_catalog.py
Then regenerate images:                  python3 data/tools/gen_product_images.py
And validate:                            python3 data/tools/validate_catalog.py
"""
import json
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CATEGORIES = [
    ("kitchen", "Kitchen", "KIT", "Cookware, tableware and tools for everyday cooking and coffee rituals."),
    ("home", "Home", "HOM", "Lighting, textiles and small furnishings that make a space feel lived in."),
    ("apparel", "Apparel", "APP", "Durable everyday clothing cut from natural and recycled fabrics."),
    ("accessories", "Accessories", "ACC", "Bags, wallets and small leather goods built to be carried daily."),
    ("outdoors", "Outdoors", "OUT", "Camping, hiking and picnic gear for weekends away from the desk."),
    ("electronics", "Electronics", "ELE", "Headphones, speakers and desk gadgets with sensible, no-fuss design."),
    ("books", "Books", "BOO", "Hand-picked titles on cooking, design, travel and the craft of making things."),
]

# (name, description, price_cents, weight_g, attributes, featured)
CATALOG = {
    "kitchen": [
        ("Espresso Cup Set", "Four double-walled porcelain cups sized for a proper double shot. The thick walls keep coffee hot while the outside stays cool to the touch. Dishwasher and microwave safe.",
         2499, 640, {"material": "porcelain", "pieces": "4", "colour": "white"}, True),
        ("Cast Iron Skillet 10in", "A pre-seasoned 10-inch skillet that goes from stovetop to oven to campfire. It holds heat evenly for searing and builds a better non-stick surface with every use.",
         3899, 2450, {"material": "cast iron", "diameter": "25 cm", "oven_safe": "yes"}, False),
        ("Olive Wood Serving Board", "Cut from a single piece of Mediterranean olive wood, each board has its own grain pattern. Use it for cheese, bread or charcuterie and oil it occasionally to keep it glowing.",
         4200, 1100, {"material": "olive wood", "length": "40 cm", "finish": "food-safe oil"}, False),
        ("Pour-Over Coffee Dripper", "A ceramic cone dripper with spiral ribs for an even extraction. Fits most mugs and carafes and takes standard size 02 paper filters.",
         1850, 420, {"material": "ceramic", "filter_size": "02", "colour": "sand"}, False),
        ("Chef's Knife 8in", "A forged stainless steel chef's knife with a full tang and a comfortable pakkawood handle. Sharpened to a 15-degree edge for clean slicing through herbs and onions.",
         6900, 230, {"material": "stainless steel", "blade_length": "20 cm", "handle": "pakkawood"}, True),
        ("Linen Tea Towels (Set of 3)", "Stonewashed linen towels that are absorbent from the first wash and get softer over time. Each has a cotton loop for hanging by the stove.",
         2200, 310, {"material": "linen", "pieces": "3", "colour": "oat stripe"}, False),
        ("Glass Storage Jars", "A set of borosilicate glass jars with airtight bamboo lids for flour, pasta and coffee beans. Stackable and easy to read at a glance.",
         3400, 2100, {"material": "borosilicate glass", "pieces": "3", "capacity": "1 L"}, False),
        ("Enamel Dutch Oven 5qt", "A heavy enamelled cast iron pot for braises, soups and crusty no-knead bread. The light interior makes it easy to watch browning, and the lid self-bastes.",
         12900, 5600, {"material": "enamelled cast iron", "capacity": "4.7 L", "colour": "tomato red"}, False),
    ],
    "home": [
        ("Brass Table Lamp", "A compact table lamp with a solid brass base and a linen drum shade. Its warm, diffused light suits a bedside table or reading corner.",
         8900, 2300, {"material": "brass", "bulb": "E26", "height": "42 cm"}, True),
        ("Chunky Knit Throw", "An oversized throw hand-knitted from soft merino blend yarn. Draped over the sofa arm it adds texture, and it is warm enough for cold evenings.",
         11500, 2800, {"material": "merino blend", "size": "130 x 170 cm", "colour": "cream"}, False),
        ("Stoneware Plant Pot", "A matte glazed stoneware pot with a drainage hole and matching saucer. Sized for medium houseplants such as pothos or a young fiddle-leaf fig.",
         2900, 1800, {"material": "stoneware", "diameter": "18 cm", "colour": "sage"}, False),
        ("Soy Wax Candle - Cedar", "A hand-poured soy wax candle with notes of cedar, vetiver and a hint of smoke. Burns cleanly for around 50 hours in a reusable amber glass jar.",
         2400, 520, {"scent": "cedar", "burn_time": "50 h", "wax": "soy"}, False),
        ("Wool Doormat", "A tightly woven wool and coir doormat that scrapes off mud and dries quickly. The rubber backing keeps it from sliding on tile or wood.",
         3600, 1900, {"material": "wool and coir", "size": "60 x 90 cm"}, False),
        ("Walnut Wall Clock", "A silent-sweep wall clock with a solid walnut face and slim brass hands. No ticking, just a quiet reminder of the time.",
         5400, 900, {"material": "walnut", "diameter": "30 cm", "movement": "silent sweep"}, False),
        ("Linen Cushion Cover", "A washed linen cushion cover with a hidden zip and a relaxed, slightly rumpled finish. Fits a standard 50 cm insert, sold separately.",
         2800, 240, {"material": "linen", "size": "50 x 50 cm", "colour": "terracotta"}, False),
        ("Woven Storage Basket", "A sturdy seagrass basket with leather handles for blankets, toys or laundry. Folds flat when not in use.",
         3900, 1200, {"material": "seagrass", "height": "35 cm", "handles": "leather"}, False),
    ],
    "apparel": [
        ("Heavyweight Cotton Tee", "A boxy t-shirt in 240 gsm organic cotton that holds its shape wash after wash. Garment dyed for a soft, lived-in colour.",
         3200, 260, {"material": "organic cotton", "fit": "boxy", "colour": "navy"}, True),
        ("Merino Crew Sweater", "A fine-gauge merino wool sweater that is warm without bulk and resists odour between washes. Layers neatly under a jacket.",
         9800, 380, {"material": "merino wool", "fit": "regular", "colour": "charcoal"}, False),
        ("Selvedge Denim Jeans", "Straight-leg jeans cut from 13.5 oz Japanese selvedge denim. Raw and unwashed, they will fade to match the way you wear them.",
         14500, 850, {"material": "selvedge denim", "fit": "straight", "weight": "13.5 oz"}, False),
        ("Waxed Canvas Jacket", "A chore-style jacket in waxed cotton canvas with a corduroy collar and four patch pockets. Sheds light rain and develops character over time.",
         18900, 1450, {"material": "waxed cotton", "pockets": "4", "colour": "olive"}, True),
        ("Oxford Button-Down Shirt", "A classic oxford cloth shirt with a soft-roll button-down collar. Dress it up for the office or wear it open over a tee.",
         6800, 340, {"material": "cotton oxford", "fit": "tailored", "colour": "light blue"}, False),
        ("Ribbed Beanie", "A snug ribbed beanie knitted from recycled wool with a deep turn-up cuff. One size fits most.",
         2600, 90, {"material": "recycled wool", "size": "one size", "colour": "mustard"}, False),
        ("Fleece Half-Zip", "A midweight recycled polyester fleece with a half-zip collar and a chest pocket. Ideal as a warm layer for hikes or chilly mornings.",
         7400, 520, {"material": "recycled polyester", "zip": "half", "colour": "forest green"}, False),
        ("Cotton Crew Socks (3-Pack)", "Cushioned crew socks in combed cotton with reinforced heels and toes. A ribbed arch keeps them in place all day.",
         1800, 150, {"material": "combed cotton", "pieces": "3", "size": "M"}, False),
    ],
    "accessories": [
        ("Leather Tote Bag", "A roomy tote in vegetable-tanned leather with an interior zip pocket. Fits a laptop, a water bottle and the day's shopping.",
         16900, 1100, {"material": "vegetable-tanned leather", "capacity": "18 L", "colour": "tan"}, True),
        ("Slim Bifold Wallet", "A minimal bifold with four card slots and a full-length note pocket. Made from full-grain leather that darkens beautifully.",
         4900, 80, {"material": "full-grain leather", "card_slots": "4", "colour": "dark brown"}, False),
        ("Canvas Backpack", "A 22-litre backpack in heavy cotton canvas with a padded laptop sleeve and leather trim. Comfortable on the commute and tough enough for weekends.",
         11200, 1250, {"material": "cotton canvas", "capacity": "22 L", "laptop": "15 in"}, False),
        ("Polarised Sunglasses", "Acetate frames with polarised lenses that cut glare on water and roads. Comes with a protective hard case and cleaning cloth.",
         8500, 60, {"frame": "acetate", "lens": "polarised", "uv": "UV400"}, False),
        ("Silk Scarf", "A square silk twill scarf printed with a botanical pattern. Wear it at the neck, in the hair or tied to a bag handle.",
         5900, 70, {"material": "silk twill", "size": "70 x 70 cm", "pattern": "botanical"}, False),
        ("Key Organiser", "A compact leather key holder that keeps up to seven keys quiet and in order. Includes a loop for a car fob.",
         2400, 40, {"material": "leather", "capacity": "7 keys"}, False),
        ("Weekender Duffel", "A generous duffel in waxed canvas with a separate shoe compartment and detachable shoulder strap. Carry-on sized for most airlines.",
         19500, 1900, {"material": "waxed canvas", "capacity": "40 L", "colour": "khaki"}, True),
        ("Woven Leather Belt", "A braided leather belt with a solid brass buckle and no fixed holes, so the fit is always exact.",
         4400, 210, {"material": "leather", "buckle": "brass", "width": "3 cm"}, False),
    ],
    "outdoors": [
        ("Two-Person Dome Tent", "A freestanding three-season tent that pitches in under five minutes. Two doors and two vestibules mean nobody climbs over anyone at night.",
         24900, 2300, {"capacity": "2 person", "season": "3-season", "doors": "2"}, True),
        ("Insulated Water Bottle", "A double-walled stainless steel bottle that keeps drinks cold for 24 hours or hot for 12. The leakproof lid has a carry loop.",
         3200, 410, {"material": "stainless steel", "capacity": "750 ml", "colour": "glacier blue"}, False),
        ("Down Sleeping Bag", "A lightweight mummy bag filled with responsibly sourced 650-fill down. Comfortable down to around 0 C and packs into its own stuff sack.",
         27900, 980, {"fill": "650 down", "comfort_rating": "0 C", "length": "regular"}, False),
        ("Folding Camp Chair", "A compact aluminium chair with a breathable mesh seat that folds into a bag the size of a water bottle. Holds up to 120 kg.",
         6900, 1050, {"frame": "aluminium", "max_load": "120 kg", "packed_length": "35 cm"}, False),
        ("LED Camping Lantern", "A rechargeable lantern with warm and cool light modes and up to 40 hours of runtime. Doubles as a power bank in a pinch.",
         3900, 380, {"brightness": "400 lm", "runtime": "40 h", "charging": "USB-C"}, False),
        ("Trekking Poles (Pair)", "Carbon fibre trekking poles with cork grips and quick-lock adjusters. They collapse small enough to strap to a daypack.",
         11900, 460, {"material": "carbon fibre", "grip": "cork", "pieces": "2"}, False),
        ("Picnic Blanket", "A water-resistant picnic blanket with a soft fleece top and a carry strap. Big enough for four people and a feast.",
         4500, 1300, {"size": "150 x 200 cm", "backing": "water-resistant", "pattern": "tartan"}, True),
        ("Enamel Camp Mug", "A classic steel enamel mug that can sit right on the camp stove. Light, tough and pleasantly chipped after a few trips.",
         1400, 180, {"material": "enamelled steel", "capacity": "350 ml", "colour": "speckled blue"}, False),
    ],
    "electronics": [
        ("Wireless Over-Ear Headphones", "Closed-back Bluetooth headphones with active noise cancelling and a 35-hour battery. Memory-foam cushions stay comfortable through long flights.",
         19900, 260, {"connectivity": "Bluetooth 5.3", "battery": "35 h", "anc": "yes"}, True),
        ("Portable Bluetooth Speaker", "A splash-proof speaker with surprisingly full bass for its size. Pair two for stereo at your next picnic.",
         7900, 540, {"connectivity": "Bluetooth 5.0", "battery": "16 h", "rating": "IPX6"}, False),
        ("Mechanical Keyboard", "A compact 75% keyboard with hot-swappable tactile switches and an aluminium case. Connects over USB-C or Bluetooth to three devices.",
         12900, 980, {"layout": "75%", "switches": "tactile", "connectivity": "USB-C / Bluetooth"}, False),
        ("Wireless Charging Pad", "A slim Qi charging pad wrapped in fabric, with a soft indicator light that dims at night. Works through most phone cases.",
         2900, 120, {"standard": "Qi", "output": "15 W", "colour": "grey"}, False),
        ("USB-C Hub 7-in-1", "Adds HDMI, two USB-A ports, SD and microSD readers and pass-through charging to any USB-C laptop. Aluminium body matches most machines.",
         4900, 90, {"ports": "7", "hdmi": "4K 60Hz", "power_delivery": "100 W"}, False),
        ("Smart LED Desk Lamp", "An adjustable desk lamp with tunable colour temperature and a built-in wireless charger in the base. Remembers your favourite brightness.",
         8900, 1400, {"colour_temp": "2700-6500 K", "dimmable": "yes", "charger": "10 W Qi"}, True),
        ("True Wireless Earbuds", "Pocketable earbuds with a snug fit, clear call microphones and a case that adds 24 hours of playback.",
         9900, 55, {"battery": "6 h + 24 h", "rating": "IPX4", "connectivity": "Bluetooth 5.2"}, False),
        ("E-Ink Reader", "A glare-free 6-inch e-ink reader with a warm front light and weeks of battery life. Holds thousands of books.",
         13900, 190, {"screen": "6 in e-ink", "storage": "16 GB", "front_light": "warm"}, False),
    ],
    "books": [
        ("The Slow Kitchen", "A seasonal cookbook built around unhurried weekend cooking, from long braises to overnight breads. Over 90 recipes with practical notes on planning ahead.",
         3500, 1150, {"author": "Mara Ellison", "format": "hardcover", "pages": "288"}, True),
        ("Field Guide to Wild Trails", "A pocket guide to 60 day hikes with maps, elevation profiles and tips on what to pack. Includes a chapter on reading the weather.",
         2200, 420, {"author": "Tomas Reyes", "format": "paperback", "pages": "240"}, False),
        ("Designing Quiet Rooms", "An illustrated look at how light, texture and proportion make homes feel calm. Case studies span small city flats to rural cottages.",
         4500, 1300, {"author": "Ines Hartmann", "format": "hardcover", "pages": "224"}, False),
        ("The Coffee Notebook", "A friendly introduction to brewing better coffee at home, covering grind size, ratios and the science behind extraction.",
         1900, 380, {"author": "Sam Okafor", "format": "paperback", "pages": "176"}, False),
        ("Made by Hand", "Profiles of twenty makers, from a blacksmith to a bookbinder, and the workshops where they spend their days. Beautifully photographed.",
         3900, 1050, {"author": "Lena Virtanen", "format": "hardcover", "pages": "256"}, False),
        ("Small Systems", "A short, practical book about building reliable software services with small teams. Covers deployment, observability and saying no.",
         2900, 510, {"author": "Priya Natarajan", "format": "paperback", "pages": "312"}, False),
        ("A Year of Gardens", "Month-by-month advice for growing vegetables and flowers in modest spaces, balconies included.",
         2600, 700, {"author": "Oliver Grant", "format": "paperback", "pages": "208"}, False),
        ("Maps of Imagined Cities", "A collection of hand-drawn maps of fictional cities, each paired with a short story. A lovely gift for daydreamers.",
         3200, 890, {"author": "Aiko Mori", "format": "hardcover", "pages": "160"}, False),
    ],
}


def slugify(s: str) -> str:
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9]+", "-", s.lower())).strip("-")


def build() -> dict:
    categories, products = [], []
    for slug, name, prefix, desc in CATEGORIES:
        categories.append({"slug": slug, "name": name, "description": desc})
        for i, (pname, pdesc, price, weight, attrs, featured) in enumerate(CATALOG[slug], 1):
            sku = f"{prefix}-{i:04d}"
            products.append({
                "id": f"{slug}-{slugify(pname)}"[:60].rstrip("-"),
                "sku": sku,
                "name": pname,
                "description": pdesc,
                "category": slug,
                "price": {"amount_minor": price, "currency": "USD"},
                "weight_grams": weight,
                "images": [f"products/{sku.lower()}.svg"],
                "attributes": attrs,
                "featured": featured,
            })
    return {"categories": categories, "products": products}


if __name__ == "__main__":
    out = ROOT / "data" / "catalog.json"
    out.write_text(json.dumps(build(), indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {out}")

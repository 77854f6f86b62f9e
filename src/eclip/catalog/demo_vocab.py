"""Word lists of the demo catalog: colours, sizes, materials, brands, sellers and title noise.

Everything the simulated sellers write comes from here, in Korean and English, so that the generator
in :mod:`eclip.catalog.demo` holds only logic. All brand and seller names are invented.
"""

from __future__ import annotations

# Unicode emoji groups and the subgroups of them that become product categories. Subgroups with too
# few usable emoji are dropped later; Smileys & Emotion is kept to a few sticker-like subgroups.
PRODUCT_GROUPS: dict[str, tuple[str, ...] | None] = {
    "Food & Drink": None,  # None: every subgroup
    "Animals & Nature": None,
    "Objects": None,
    "Travel & Places": None,
    "Activities": None,
    "Smileys & Emotion": ("cat-face", "face-costume", "face-smiling"),
}
MIN_EMOJI_PER_SUBGROUP = 4

# Age-restricted (19+) products, keyed by the emoji's English name in the `emoji` package.
ADULT_EMOJI_NAMES: frozenset[str] = frozenset({
    "beer mug", "clinking beer mugs", "wine glass", "sake", "cocktail glass", "tropical drink",
    "tumbler glass", "bottle with popping cork", "clinking glasses", "cigarette", "slot machine",
})

# Korean names of the `emoji` package that do not describe the product (e.g. the cigarette emoji is
# named "smoking area sign"); these replace them.
KOREAN_NAME_OVERRIDES: dict[str, str] = {
    "cigarette": "담배",
    "tropical drink": "트로피컬 칵테일",
    "bottle with popping cork": "샴페인 병",
    "clinking beer mugs": "맥주 세트",
}

# colour -> (RGB anchor used to recolour the artwork, Korean words, English words)
COLORS: dict[str, tuple[tuple[int, int, int], tuple[str, ...], tuple[str, ...]]] = {
    "red": ((214, 38, 38), ("빨강", "레드", "빨간색"), ("red", "Red", "RED")),
    "orange": ((245, 128, 24), ("주황", "오렌지"), ("orange", "Orange")),
    "yellow": ((240, 204, 28), ("노랑", "옐로우", "노란색"), ("yellow", "Yellow")),
    "green": ((34, 150, 64), ("초록", "그린", "녹색"), ("green", "Green", "GREEN")),
    "blue": ((36, 88, 214), ("파랑", "블루", "파란색"), ("blue", "Blue", "BLUE")),
    "purple": ((128, 56, 184), ("보라", "퍼플"), ("purple", "Purple")),
    "pink": ((242, 118, 178), ("분홍", "핑크"), ("pink", "Pink")),
    "brown": ((128, 78, 36), ("갈색", "브라운"), ("brown", "Brown")),
    "black": ((30, 30, 30), ("검정", "블랙", "검은색"), ("black", "Black", "BLACK")),
    "white": ((242, 242, 242), ("흰색", "화이트"), ("white", "White")),
}
# Emoji whose English name contains one of these words are not used (a "blue book" cannot be red).
COLOR_WORDS: frozenset[str] = frozenset(set(COLORS) | {"grey", "gray"})

SIZES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "S": (("S사이즈", "소형", "(S)", "스몰"), ("size S", "(S)", "Small", "S size")),
    "M": (("M사이즈", "중형", "(M)", "미디움"), ("size M", "(M)", "Medium", "M size")),
    "L": (("L사이즈", "대형", "(L)", "라지"), ("size L", "(L)", "Large", "L size")),
}

# material -> (Korean words, English words); food and drink products have no material.
MATERIALS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "cotton": (("면", "코튼"), ("cotton", "Cotton")),
    "plastic": (("플라스틱",), ("plastic", "Plastic")),
    "wood": (("원목", "나무"), ("wood", "wooden")),
    "metal": (("메탈", "금속"), ("metal", "Metal")),
    "ceramic": (("세라믹", "도자기"), ("ceramic", "Ceramic")),
    "glass": (("유리",), ("glass", "Glass")),
    "silicone": (("실리콘",), ("silicone", "Silicone")),
    "leather": (("가죽", "레더"), ("leather", "Leather")),
}
NO_MATERIAL_GROUPS: frozenset[str] = frozenset({"Food & Drink"})

# pack count -> (Korean patterns, English patterns); "{n}" is the count.
PACK_WORDS: dict[int, tuple[tuple[str, ...], tuple[str, ...]]] = {
    1: (("단품", "1개"), ("single", "1pc", "1 pack")),
    2: (("{n}개입", "{n}개 세트", "{n}P", "x{n}", "1+1"),
        ("{n} pack", "{n}-pack", "set of {n}", "x{n}", "{n}pcs")),
    3: (("{n}개입", "{n}개 세트", "{n}P", "x{n}"),
        ("{n} pack", "{n}-pack", "set of {n}", "x{n}", "{n}pcs")),
}
PACK_WEIGHTS: dict[int, float] = {1: 0.6, 2: 0.25, 3: 0.15}

# brand (as stored in the `brand` field), its Korean form, its Latin form
BRANDS: tuple[tuple[str, str, str], ...] = (
    ("해담", "해담", "Haedam"),
    ("온누리", "온누리", "Onnuri"),
    ("새봄", "새봄", "Saebom"),
    ("다온", "다온", "Daon"),
    ("늘봄", "늘봄", "Neulbom"),
    ("별빛공방", "별빛공방", "Byeolbit"),
    ("푸른숲", "푸른숲", "Pureunsup"),
    ("미소담", "미소담", "Misodam"),
    ("가온", "가온", "Gaon"),
    ("한결", "한결", "Hangyeol"),
    ("ACME", "ACME", "ACME"),
    ("Hanbit", "한빛", "Hanbit"),
    ("Nordline", "Nordline", "Nordline"),
    ("Brightway", "브라이트웨이", "Brightway"),
    ("Lumio", "Lumio", "Lumio"),
    ("Orbisa", "Orbisa", "Orbisa"),
    ("Pinecrest", "Pinecrest", "Pinecrest"),
    ("Tidewell", "Tidewell", "Tidewell"),
    ("Vantor", "반토르", "Vantor"),
    ("Zephyra", "Zephyra", "Zephyra"),
    ("Kestrel & Co", "Kestrel & Co", "Kestrel & Co"),
    ("Mellow", "멜로우", "Mellow"),
    ("Quokka", "Quokka", "Quokka"),
    ("Urbanest", "Urbanest", "Urbanest"),
)
BRANDS_PER_GROUP = 8

# seller id (ASCII, used in watermarks and English tags) and Korean shop name
SELLERS: tuple[tuple[str, str], ...] = (
    ("daonmall", "다온몰"), ("bestshop24", "베스트샵24"), ("happybuy", "해피바이"),
    ("k_outlet", "케이아울렛"), ("megadeal", "메가딜"), ("sunnymarket", "써니마켓"),
    ("hanamart", "하나마트"), ("goodday", "굿데이스토어"), ("lotus_store", "로터스스토어"),
    ("bomnal", "봄날상회"), ("cheapcheap", "싸다싸"), ("dailypick", "데일리픽"),
    ("mintshop", "민트샵"), ("yellowbox", "옐로박스"), ("seoul_direct", "서울직송"),
    ("jeju_farm", "제주농장"), ("busan_trade", "부산상사"), ("gift_land", "선물나라"),
    ("toktok", "톡톡마켓"), ("primemart", "프라임마트"), ("homeplanet", "홈플래닛"),
    ("wowdeal", "와우딜"), ("smartbuy", "스마트바이"), ("ohmystore", "오마이스토어"),
    ("rainbow", "무지개상점"), ("onestop", "원스톱몰"), ("lucky7", "럭키세븐"),
    ("greenbee", "그린비"), ("moon_shop", "달빛샵"), ("topten", "탑텐마켓"),
)

PROMO_PREFIX_KO: tuple[str, ...] = (
    "[무료배송]", "★특가★", "[당일발송]", "[최저가]", "(정품)", "[공식]", "【핫딜】", "♥인기♥",
    "[단독]", "[오늘출발]", "◆신상◆",
)
PROMO_SUFFIX_KO: tuple[str, ...] = (
    "무료배송", "당일발송", "!!!", "~", "강력추천", "선물용", "최저가 도전", "국내배송", "한정수량",
)
PROMO_PREFIX_EN: tuple[str, ...] = (
    "[FREE SHIPPING]", "BEST", "HOT DEAL", "NEW", "*SALE*", "[Official]", "(Genuine)", "<<TOP>>",
)
PROMO_SUFFIX_EN: tuple[str, ...] = (
    "free shipping", "!!!", "- fast delivery", "gift idea", "best seller", "limited",
    "100% authentic",
)
ADULT_MARKS_KO: tuple[str, ...] = ("(19세 이상)", "[성인인증]", "19+")
ADULT_MARKS_EN: tuple[str, ...] = ("(19+)", "[adults only]", "19+")

# photo badges and their colours (ASCII: drawn with PIL's default font)
BADGES: tuple[str, ...] = ("SALE", "BEST", "NEW", "-30%", "-50%", "HOT", "1+1", "TOP")
BADGE_COLORS: tuple[tuple[int, int, int], ...] = (
    (220, 30, 40), (250, 120, 0), (20, 20, 20), (0, 110, 220),
)

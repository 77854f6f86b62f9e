"""Title normalisation: exact outputs on real-looking marketplace titles."""

from __future__ import annotations

import pytest

from eclip.catalog.text import (
    PROMO_PHRASES, basic_normalize, collapse_whitespace, is_promo_only, normalize_title,
)

CASES = [
    # promo brackets, decorative pair, repeated punctuation; informative brackets kept
    ("[무료배송]★특가★ 나이키 에어맥스 270 운동화 (블랙) 250mm!!!",
     "나이키 에어맥스 270 운동화 (블랙) 250mm"),
    # full-width letters, digits and ideographic space
    ("ＮＩＫＥ　２７０ 에어맥스", "NIKE 270 에어맥스"),
    ("（정품）ＡＤＩＤＡＳ　삼바ＯＧ　ＢＢ６９７５", "ADIDAS 삼바OG BB6975"),
    # English promo on word boundaries: wholesale / salesman untouched
    ("Wholesale Salesman Bag SALE Free Shipping", "Wholesale Salesman Bag"),
    # double-escaped entities and escaped tags
    ("&amp;quot;정품&amp;quot; 아디다스 &lt;b&gt;삼바&lt;/b&gt; OG <br/> 블랙",
     '"정품" 아디다스 삼바 OG 블랙'),
    ("<!-- seller --> LG 그램 16 &#39;2024&#39; i7 &amp; 파우치", "LG 그램 16 '2024' i7 & 파우치"),
    # seller tags
    ("【공식판매】 삼성 갤럭시 버즈2 프로 (그래파이트)", "삼성 갤럭시 버즈2 프로 (그래파이트)"),
    ("[나이키 공식스토어] 에어포스1 07 화이트 (260mm)", "에어포스1 07 화이트 (260mm)"),
    ("Anker PowerCore 10000 (Official Store) [2 pack]", "Anker PowerCore 10000 [2 pack]"),
    # <특가> is a bracket, not an HTML tag; [2 pack] is informative
    ("<특가> 로지텍 MX Master 3S 무선 마우스 [2 pack]", "로지텍 MX Master 3S 무선 마우스 [2 pack]"),
    ("★오늘출발★ 다이슨 V15 디텍트 무선청소기", "다이슨 V15 디텍트 무선청소기"),
    # model numbers survive, tilde runs removed
    ("(당일발송) 조던 AJ1-85 하이 OG ~~~ 초특가!!!", "조던 AJ1-85 하이 OG"),
    ("ZOTAC RTX 4090 Trinity OC 24GB 🔥🔥 HOT DEAL 🔥🔥", "ZOTAC RTX 4090 Trinity OC 24GB"),
    # Korean promo as substrings, but 세일러 ("sailor") is a word; discounts are promo
    ("세일러문 피규어 세일 최대 70% 할인", "세일러문 피규어"),
    ("[BEST] [MD추천] 크록스 클래식 클로그 (블랙/화이트) 1+1", "크록스 클래식 클로그 (블랙/화이트)"),
    ("나이키 ♥♡ 에어맥스 ▶▶ 270 ◆◆ 블랙", "나이키 에어맥스 270 블랙"),
    # compatibility jamo stay as they are (plain NFKC would make them conjoining jamo)
    ("ㅋㅋ 웃긴 양말 ㆍ 3켤레", "ㅋㅋ 웃긴 양말 ㆍ 3켤레"),
    ("Nike® Air Max™ 90 Infrared", "Nike Air Max 90 Infrared"),
    ("Apple iPad Pro 11 (4th Gen) Wi-Fi 128GB - Best Price - New Arrival",
     "Apple iPad Pro 11 (4th Gen) Wi-Fi 128GB"),
    ("C++ 프로그래밍 책 [50% 할인]", "C++ 프로그래밍 책"),
    # "..." is decoration; single "~" and "." in ranges and numbers are kept
    ("나이키 운동화... 정말 좋아요~~ 250~260mm 0.5kg", "나이키 운동화 정말 좋아요 250~260mm 0.5kg"),
    ("Samsung 55\" 4K UHD TV 【100% Authentic】 (Limited Offer)", 'Samsung 55" 4K UHD TV'),
    # "Best" and "Free" outside brackets are product words; 100% cotton is not promo
    ("Best Friend Necklace (Gold) 2pcs", "Best Friend Necklace (Gold) 2pcs"),
    ("Nike Free Run 5.0 (Black) 100% Cotton Socks", "Nike Free Run 5.0 (Black) 100% Cotton Socks"),
    # 이벤트용 / 매장용 ("for events" / "for stores") are product words, not promo or seller tags
    ("이벤트용 풍선 세트 (매장용) 50개입", "이벤트용 풍선 세트 (매장용) 50개입"),
    # nested brackets: inner tags go first, the outer bracket is then judged on what is left
    ("[[무료배송]] 【[공식] 나이키 (블랙)】 에어맥스", "【나이키 (블랙)】 에어맥스"),
    # unbalanced brackets are plain text
    ("나이키 (250mm 운동화 [블랙", "나이키 (250mm 운동화 [블랙"),
    ("<BEST> <Black> <b>굵게</b> 운동화", "<Black> 굵게 운동화"),
    ("다이슨 에어랩 | 무료배송 | 정품 | ", "다이슨 에어랩 | 정품"),
    ("- - 삼성 / / 갤럭시 S24 울트라 ,, 256GB ^^ ", "삼성 / 갤럭시 S24 울트라, 256GB"),
    ("NEW 아이폰 15 프로 맥스 (NEW) [신상]", "NEW 아이폰 15 프로 맥스"),
    ("Apple AirPods Pro 2 ✔️ 🎧 Free Delivery!!!", "Apple AirPods Pro 2"),
    ("스타벅스 텀블러 ❤️ 🎁 사은품증정 💝 (355ml)", "스타벅스 텀블러 (355ml)"),
    ("[오늘출발/무료배송] 레고 테크닉 42115 람보르기니", "레고 테크닉 42115 람보르기니"),
    ("《한정판》 포켓몬 카드 【BEST 상품】", "《한정판》 포켓몬 카드"),
    # a bracket that keeps product words loses only its promo
    ("캠핑 의자 (카키 무료배송) 2개", "캠핑 의자 (카키) 2개"),
    # zero-width characters and soft hyphens are removed (a ZWSP cannot hide a promo phrase)
    ("무료\u200b배송 샤오미 \u00ad미밴드 8\ufeff", "샤오미 미밴드 8"),
    ("Levi's 501 Original Jeans\tW32\nL34", "Levi's 501 Original Jeans W32 L34"),
    ("㎜ 단위 자 30㎝ ①번", "mm 단위 자 30cm 1번"),
    # promo-only titles become empty
    ("★무료배송★ 특가!!", ""),
    ("[BEST] 1+1 당일발송 ~~", ""),
]


@pytest.mark.parametrize(("raw", "expected"), CASES)
def test_normalize_title_exact(raw: str, expected: str) -> None:
    assert normalize_title(raw) == expected


@pytest.mark.parametrize(("raw", "_"), CASES)
def test_normalize_title_is_idempotent_and_has_no_doubled_spaces(raw: str, _: str) -> None:
    once = normalize_title(raw)
    assert normalize_title(once) == once
    assert "  " not in once
    assert once == once.strip()


def test_keep_emoji_keeps_pictographs_but_not_decoration() -> None:
    title = "아이폰 케이스 🔥 신상 👍🏻 ★ ❤️ 👨\u200d👩\u200d👧"
    assert normalize_title(title, keep_emoji=True) == "아이폰 케이스 🔥 신상 👍🏻 👨\u200d👩\u200d👧"
    assert normalize_title(title) == "아이폰 케이스 신상"


def test_extra_promo_extends_the_lexicon_for_one_call() -> None:
    title = "블랙 프라이데이 아이폰 케이스 [블랙프라이데이]"
    assert normalize_title(title, extra_promo=["블랙 프라이데이"]) == "아이폰 케이스"
    assert normalize_title(title) == "블랙 프라이데이 아이폰 케이스 [블랙프라이데이]"


def test_promo_lexicon_is_an_immutable_public_constant() -> None:
    assert isinstance(PROMO_PHRASES, tuple)
    assert "무료 배송" in PROMO_PHRASES and "free shipping" in PROMO_PHRASES


def test_is_promo_only() -> None:
    assert is_promo_only("★무료배송★ 특가!!")
    assert is_promo_only("FREE SHIPPING - Best Price")
    assert not is_promo_only("나이키 무료배송")
    assert not is_promo_only("")
    assert not is_promo_only(" \u200b ")
    assert is_promo_only("블랙프라이데이", extra_promo=["블랙프라이데이"])


def test_basic_normalize_removes_no_words() -> None:
    assert basic_normalize("ＳＡＬＥ &amp; 무료배송  <b>나이키</b>") == "SALE & 무료배송 나이키"
    assert collapse_whitespace("  a \t b\n") == "a b"

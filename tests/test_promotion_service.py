"""PromotionService and RiskService over a real server on 127.0.0.1: the life
cycle, a dry-run pricing, and the counters that must hold under concurrency
(red packet shares, coupon totals, lottery stock, a velocity limit)."""

import asyncio
import time

import grpc
import pytest

from tally.v1 import card_pb2, card_pb2_grpc, common_pb2, payment_pb2, promotion_pb2, promotion_pb2_grpc
from tests.support import DEMO_COMPANY_CARD, Terminal

R = common_pb2
P = promotion_pb2
HOUR_MS = 3_600_000
PERSONAL_ACCOUNT = 2
CUSTOMERS = 1_000
SHARES = 100
PACKET_TOTAL = 50_000


@pytest.fixture(scope="module")
def promotions(server):
    return promotion_pb2_grpc.PromotionServiceStub(server.channel())


@pytest.fixture(scope="module")
def risk(server):
    return promotion_pb2_grpc.RiskServiceStub(server.channel())


@pytest.fixture(scope="module")
def terminal(server):
    return Terminal(server.channel(), terminal_id=601)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def running(promotions, **fields) -> P.Promotion:
    """A promotion created by alice, submitted, and approved by bob."""
    fields.setdefault("valid_from_ms", now_ms() - HOUR_MS)
    fields.setdefault("valid_to_ms", now_ms() + HOUR_MS)
    fields.setdefault("name", "test")
    created = promotions.CreatePromotion(P.CreatePromotionRequest(promotion=P.Promotion(**fields), by="alice")).promotion
    promotions.SubmitPromotion(P.StepRequest(promotion_id=created.promotion_id, by="alice"))
    return promotions.ApprovePromotion(P.StepRequest(promotion_id=created.promotion_id, by="bob")).promotion


def open_cards(server, first_card_id: int, count: int, points: int = 0):
    async def run():
        async with grpc.aio.insecure_channel(server.address) as channel:
            cards = card_pb2_grpc.CardServiceStub(channel)

            async def one(index):
                card_id = first_card_id + index
                opened = await cards.OpenCard(card_pb2.OpenCardRequest(card_id=card_id, card_type=card_pb2.PERSONAL_CARD))
                assert opened.result == R.APPROVED
                if points:
                    context = common_pb2.TerminalContext(station_id=1, terminal_id=602, serial=card_id, operator_id=1)
                    topped = await cards.TopUp(card_pb2.TopUpRequest(terminal=context, card_id=card_id, account=R.POINTS, amount=points))
                    assert topped.result == R.APPROVED

            await asyncio.gather(*(one(index) for index in range(count)))

    asyncio.run(run())


def race(server, calls):
    """Run calls(stub, index) for every index at once; the answers in order."""
    async def run():
        async with grpc.aio.insecure_channel(server.address) as channel:
            stub = promotion_pb2_grpc.PromotionServiceStub(channel)
            return await asyncio.gather(*(call(stub, index) for index, call in enumerate(calls)))

    return asyncio.run(run())


def context(terminal_id: int, serial: int, station_id: int = 1):
    return common_pb2.TerminalContext(station_id=station_id, terminal_id=terminal_id, serial=serial, operator_id=7)


# ---------------------------------------------------------------- life cycle and pricing


def test_an_inconsistent_promotion_is_refused_naming_the_field(promotions):
    base = dict(kind=P.PROMOTION_KIND_DISCOUNT, name="x", valid_from_ms=2_000, valid_to_ms=3_000)
    for fields, field, text in (
        (dict(valid_to_ms=1_000, discount=P.DiscountTerms(off_permille=100)), "promotion.valid_to_ms", "ends (1000) before it starts (2000)"),
        (dict(discount=P.DiscountTerms(off_permille=1_200)), "promotion.discount.off_permille", "must be within 0 .. 1000, got 1200"),
        (dict(amount_min_minor=9, amount_max_minor=8, discount=P.DiscountTerms(off_permille=1)), "promotion.amount_min_minor", "above"),
        (dict(stock=-1, discount=P.DiscountTerms(off_permille=1)), "promotion.stock", "must not be negative"),
        (dict(kind=P.PROMOTION_KIND_COUPON, coupon=P.CouponTerms(min_spend_minor=10)), "promotion.coupon",
         "set exactly one of face_value_minor and off_permille"),
        # Terms are a oneof: coupon terms replace the discount's.
        (dict(discount=P.DiscountTerms(off_permille=1), coupon=P.CouponTerms(face_value_minor=1)), "promotion.discount",
         "a DISCOUNT promotion needs its discount terms"),
    ):
        with pytest.raises(grpc.RpcError) as error:
            promotions.CreatePromotion(P.CreatePromotionRequest(promotion=P.Promotion(**{**base, **fields}), by="alice"))
        assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert error.value.details().startswith(f"{field}: ") and text in error.value.details(), error.value.details()


def test_the_life_cycle_with_who_and_when(promotions):
    draft = promotions.CreatePromotion(P.CreatePromotionRequest(by="alice", promotion=P.Promotion(
        kind=P.PROMOTION_KIND_DISCOUNT, name="later", valid_from_ms=now_ms(), valid_to_ms=now_ms() + HOUR_MS,
        discount=P.DiscountTerms(off_permille=50)))).promotion
    pid = draft.promotion_id
    promotions.SubmitPromotion(P.StepRequest(promotion_id=pid, by="alice"))
    for call, by, code in ((promotions.ApprovePromotion, "alice", grpc.StatusCode.FAILED_PRECONDITION),
                           (promotions.ActivatePromotion, "bob", grpc.StatusCode.FAILED_PRECONDITION)):
        with pytest.raises(grpc.RpcError) as error:
            call(P.StepRequest(promotion_id=pid, by=by))
        assert error.value.code() == code
    with pytest.raises(grpc.RpcError) as error:
        promotions.CreatePromotion(P.CreatePromotionRequest(by="alice", promotion=draft))
    assert error.value.code() == grpc.StatusCode.FAILED_PRECONDITION and "only a draft can be changed" in error.value.details()
    promotions.ApprovePromotion(P.StepRequest(promotion_id=pid, by="bob"))
    promotions.ActivatePromotion(P.StepRequest(promotion_id=pid, by="bob"))
    ended = promotions.EndPromotion(P.StepRequest(promotion_id=pid, by="carol")).promotion
    assert [(c.stage, c.by) for c in ended.history] == [
        (P.PROMOTION_STAGE_DRAFT, "alice"), (P.PROMOTION_STAGE_SUBMITTED, "alice"), (P.PROMOTION_STAGE_APPROVED, "bob"),
        (P.PROMOTION_STAGE_ACTIVE, "bob"), (P.PROMOTION_STAGE_ENDED, "carol")]
    with pytest.raises(grpc.RpcError) as error:
        promotions.GetPromotion(P.GetPromotionRequest(promotion_id=10**12))
    assert error.value.code() == grpc.StatusCode.NOT_FOUND


def test_price_basket_is_a_dry_run_that_says_why_the_others_do_not_apply(promotions):
    station = 77  # only promotions of this test run here
    fuel = running(promotions, kind=P.PROMOTION_KIND_DISCOUNT, name="fuel 0.30/l", stations=[station], exclusive_group="fuel",
                   priority=5, discount=P.DiscountTerms(off_per_litre_minor=30, categories=["fuel"]))
    rate = running(promotions, kind=P.PROMOTION_KIND_DISCOUNT, name="5% off", stations=[station], exclusive_group="fuel",
                   discount=P.DiscountTerms(off_permille=50))
    water = running(promotions, kind=P.PROMOTION_KIND_GOODS, name="water 1.50", stations=[station], stock=10,
                    goods=P.GoodsTerms(goods_codes=["W1"], fixed_price_minor=150))
    draft = promotions.CreatePromotion(P.CreatePromotionRequest(by="alice", promotion=P.Promotion(
        kind=P.PROMOTION_KIND_DISCOUNT, name="draft", stations=[station], valid_from_ms=now_ms() - HOUR_MS, valid_to_ms=now_ms() + HOUR_MS,
        discount=P.DiscountTerms(off_permille=900)))).promotion
    request = P.PriceBasketRequest(station_id=station, card_id=DEMO_COMPANY_CARD, amount_minor=30_400, coupon_codes=["NOPE-NOPE"], basket=[
        common_pb2.BasketLine(goods_code="92", category="fuel", quantity_milli=40_000, unit_price_minor=750, amount_minor=30_000),
        common_pb2.BasketLine(goods_code="W1", category="shop", quantity_milli=2_000, unit_price_minor=200, amount_minor=400),
    ])
    answer = promotions.PriceBasket(request)
    assert [(a.promotion_id, a.discount_minor) for a in answer.applied] == [(water.promotion_id, 100), (fuel.promotion_id, 1_200)]
    assert answer.discount_minor == 1_300 and answer.amount_minor == 29_100
    assert [(t.scope, t.delta, t.ceiling) for t in answer.applied[0].takes] == [(2, 100, 0), (1, 2, 10)]
    assert {s.promotion_id: s.reason for s in answer.skipped} == {
        rate.promotion_id: f"exclusive group 'fuel': promotion {fuel.promotion_id} applies",
        draft.promotion_id: "DRAFT: only approved or active promotions apply",
    }
    assert list(answer.unknown_codes) == ["NOPE-NOPE"]
    again = promotions.PriceBasket(request)
    assert again == answer, "the same basket prices the same way"
    with pytest.raises(grpc.RpcError) as error:
        promotions.PriceBasket(P.PriceBasketRequest(station_id=station, amount_minor=100, basket=request.basket))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "basket: line amounts add up to 30400" in error.value.details()


# ---------------------------------------------------------------- red packets


def test_a_thousand_customers_claim_a_hundred_share_packet_at_once(promotions, server, terminal):
    promotion = running(promotions, kind=P.PROMOTION_KIND_RED_PACKET, name="new year",
                        packet=P.PacketTerms(share_count=SHARES, min_share_minor=10))
    issuer_before = terminal.card(DEMO_COMPANY_CARD).balances.personal_minor
    created = promotions.CreatePacket(P.CreatePacketRequest(promotion_id=promotion.promotion_id, total_minor=PACKET_TOTAL,
                                                            issuer_kind=PERSONAL_ACCOUNT, issuer_owner=DEMO_COMPANY_CARD, by="ops",
                                                            request_id="new-year-1"))
    assert created.result == R.APPROVED and created.packet.state == P.PACKET_STATE_OPEN
    assert created.balance_minor == PACKET_TOTAL
    assert terminal.card(DEMO_COMPANY_CARD).balances.personal_minor == issuer_before - PACKET_TOTAL
    packet_id = created.packet.packet_id
    first_card = 71_000_000
    open_cards(server, first_card, CUSTOMERS)

    # Every customer claims twice at once (two serials), 2,000 claims in all.
    def claim(index):
        card_id = first_card + index % CUSTOMERS
        request = P.ClaimPacketRequest(terminal=context(603, index + 1), packet_id=packet_id, card_id=card_id)
        return lambda stub, _: stub.ClaimPacket(request)

    answers = race(server, [claim(index) for index in range(2 * CUSTOMERS)])
    codes = [answer.result for answer in answers]
    assert codes.count(R.APPROVED) == SHARES
    assert codes.count(R.PACKET_ALREADY_CLAIMED) == SHARES, "each winner's other claim"
    assert codes.count(R.PACKET_EMPTY) == 2 * (CUSTOMERS - SHARES)
    won = {}
    for index, answer in enumerate(answers):
        if answer.result == R.APPROVED:
            assert first_card + index % CUSTOMERS not in won, "nobody twice"
            won[first_card + index % CUSTOMERS] = answer.amount_minor
    assert len(won) == SHARES and sum(won.values()) == PACKET_TOTAL and min(won.values()) >= 10
    shown = promotions.GetPacket(P.GetPacketRequest(packet_id=packet_id, with_shares=True))
    assert (shown.claimed_count, shown.claimed_minor, shown.balance_minor) == (SHARES, PACKET_TOTAL, 0)
    assert sorted(shown.shares) == sorted(won.values())
    winner, amount = next(iter(won.items()))
    assert terminal.card(winner).balances.personal_minor == amount
    again = promotions.ClaimPacket(P.ClaimPacketRequest(terminal=context(603, 5_000), packet_id=packet_id, card_id=winner))
    assert again.result == R.PACKET_ALREADY_CLAIMED


def test_the_claim_condition_the_expiry_and_the_rest_going_back(promotions, server, terminal):
    promotion = running(promotions, kind=P.PROMOTION_KIND_RED_PACKET, name="spend and claim",
                        packet=P.PacketTerms(share_count=4, split=P.PACKET_SPLIT_EQUAL, claim_min_spend_minor=10_000, packet_validity_s=2))
    issuer = 72_000_000
    open_cards(server, issuer, 2)
    terminal.topup(issuer, 10_000)
    created = promotions.CreatePacket(P.CreatePacketRequest(promotion_id=promotion.promotion_id, total_minor=1_001,
                                                            issuer_kind=PERSONAL_ACCOUNT, issuer_owner=issuer, by="ops",
                                                            request_id="spend-1"))
    assert created.result == R.APPROVED
    packet_id = created.packet.packet_id
    poor = promotions.CreatePacket(P.CreatePacketRequest(promotion_id=promotion.promotion_id, total_minor=1_000_000,
                                                         issuer_kind=PERSONAL_ACCOUNT, issuer_owner=issuer, by="ops",
                                                         request_id="spend-2"))
    assert (poor.result, poor.packet.state) == (R.INSUFFICIENT_FUNDS, P.PACKET_STATE_FAILED)
    claimant = issuer + 1
    claim = P.ClaimPacketRequest(terminal=context(604, 1), packet_id=packet_id, card_id=claimant)
    refused = promotions.ClaimPacket(claim)
    assert refused.result == R.COUNTER_LIMIT_REACHED
    assert refused.rule == f"promotion {promotion.promotion_id} claim condition: needs a spend of 10000 today; the card spent 0"
    terminal.topup(claimant, 10_000)
    paid, _ = terminal.pay(10_000, card_id=claimant, use_fleet=False, use_personal=True)
    assert paid.result == R.APPROVED
    claim = P.ClaimPacketRequest(terminal=context(604, 2), packet_id=packet_id, card_id=claimant)
    claimed = promotions.ClaimPacket(claim)
    assert (claimed.result, claimed.amount_minor, claimed.personal_balance_minor) == (R.APPROVED, 251, 251)
    time.sleep(2.1)
    returned = promotions.ReturnExpiredPackets(P.ReturnExpiredPacketsRequest())
    # (Unless the server's own minutely job was first: GetPacket below tells.)
    assert packet_id not in [r.packet_id for r in returned.returned] or (packet_id, 750) in [
        (r.packet_id, r.returned_minor) for r in returned.returned]
    assert terminal.card(issuer).balances.personal_minor == 10_000 - 1_001 + 750
    late = promotions.ClaimPacket(P.ClaimPacketRequest(terminal=context(604, 3), packet_id=packet_id, card_id=DEMO_COMPANY_CARD))
    assert late.result == R.PACKET_EMPTY and "expired" in late.rule
    assert promotions.ClaimPacket(claim) == claimed, "a retry after expiry still gets the first answer"
    shown = promotions.GetPacket(P.GetPacketRequest(packet_id=packet_id))
    assert (shown.packet.state, shown.packet.returned_minor, shown.balance_minor) == (P.PACKET_STATE_RETURNED, 750, 0)


# ---------------------------------------------------------------- coupons


def test_coupons_issued_at_once_never_pass_the_total_count(promotions, server):
    promotion = running(promotions, kind=P.PROMOTION_KIND_COUPON, name="5.00 off",
                        coupon=P.CouponTerms(face_value_minor=500, min_spend_minor=2_000, per_issue_count=2, total_count=50))
    first_card = 73_000_000
    open_cards(server, first_card, 60)
    issue = lambda index: lambda stub, _: stub.IssueCoupons(P.IssueCouponsRequest(
        promotion_id=promotion.promotion_id, card_id=first_card + index, by="ops", request_id=f"batch-{index}"))
    answers = race(server, [issue(index) for index in range(60)])
    codes = [answer.result for answer in answers]
    assert codes.count(R.APPROVED) == 25
    assert codes.count(R.COUNTER_LIMIT_REACHED) == 35
    assert {answer.rule for answer in answers if answer.result != R.APPROVED} == {f"promotion {promotion.promotion_id} coupons issued"}
    issued = [coupon for answer in answers for coupon in answer.coupons]
    assert len(issued) == 50 and len({coupon.code for coupon in issued}) == 50
    assert all(len(coupon.code) == 16 and not coupon.used for coupon in issued)
    shown = promotions.GetPromotion(P.GetPromotionRequest(promotion_id=promotion.promotion_id))
    assert shown.counters.coupons_issued == 50
    found = promotions.GetCoupon(P.GetCouponRequest(code="-".join(issued[0].code[i:i + 4] for i in range(0, 16, 4)).lower()))
    assert found.coupon.coupon_id == issued[0].coupon_id
    mine = promotions.ListCoupons(P.ListCouponsRequest(card_id=issued[0].card_id))
    assert [coupon.coupon_id for coupon in mine.coupons] == [c.coupon_id for c in issued if c.card_id == issued[0].card_id]


def test_a_bearer_coupon_used_by_many_sales_at_once_is_used_once(promotions, server):
    if "coupon_codes" not in payment_pb2.PayRequest.DESCRIPTOR.fields_by_name:
        pytest.skip("waiting for coupons in Pay (server/payments.py, PayRequest.coupon_codes)")
    promotion = running(promotions, kind=P.PROMOTION_KIND_COUPON, name="bearer 3.00", coupon=P.CouponTerms(face_value_minor=300))
    (coupon,) = promotions.IssueCoupons(P.IssueCouponsRequest(promotion_id=promotion.promotion_id, by="ops",
                                                              request_id="bearer-1")).coupons
    first_card = 74_000_000
    open_cards(server, first_card, 20, points=0)

    async def run():
        async with grpc.aio.insecure_channel(server.address) as channel:
            terminal = Terminal(channel)

            async def pay(index):
                card_id = first_card + index
                request = payment_pb2.PayRequest(terminal=context(605, index + 1), amount_minor=1_000, coupon_codes=[coupon.code],
                                                 plan=payment_pb2.PaymentPlan(card_id=card_id, channel=R.WECHAT_PAY))
                return await terminal.payments.Pay(request)

            return await asyncio.gather(*(pay(index) for index in range(20)))

    answers = asyncio.run(run())
    assert [answer.result for answer in answers].count(R.APPROVED) == 20
    assert sorted(answer.amount_minor for answer in answers) == [700] + [1_000] * 19
    assert promotions.GetCoupon(P.GetCouponRequest(code=coupon.code)).coupon.used


# ---------------------------------------------------------------- lottery


def test_lottery_stock_never_goes_below_zero_under_concurrent_draws(promotions, server):
    lottery = P.LotteryTerms(prizes=[P.Prize(prize_id=1, name="car", probability_ppm=1_000_000, stock=3),
                                     P.Prize(prize_id=2, name="thanks", probability_ppm=0, stock=5)], consolation_prize_id=2)
    promotion = running(promotions, kind=P.PROMOTION_KIND_LOTTERY, name="draw", lottery=lottery)
    pid = promotion.promotion_id
    first_card = 75_000_000
    open_cards(server, first_card, 30)
    grants = race(server, [lambda stub, index: stub.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=first_card + index,
                                                                                       count=1, by="ops")) for _ in range(30)])
    assert [(g.result, g.granted, g.chances) for g in grants] == [(R.APPROVED, 1, 1)] * 30
    draws = race(server, [lambda stub, index: stub.Draw(P.DrawRequest(promotion_id=pid, card_id=first_card + index)) for _ in range(30)])
    assert [d.result for d in draws] == [R.APPROVED] * 30
    prizes = [d.prize_id for d in draws]
    assert (prizes.count(1), prizes.count(2), prizes.count(0)) == (3, 5, 22)
    assert all(d.consolation for d in draws if d.prize_id != 1) and all(d.chances_left == 0 for d in draws)
    counters = promotions.GetPromotion(P.GetPromotionRequest(promotion_id=pid)).counters
    assert [(c.prize_id, c.given, c.left) for c in counters.prizes_given] == [(1, 3, 0), (2, 5, 0)]
    no_chance = promotions.Draw(P.DrawRequest(promotion_id=pid, card_id=first_card))
    assert (no_chance.result, no_chance.rule) == (R.COUNTER_EXHAUSTED, f"promotion {pid} chances")
    logged = promotions.ListDraws(P.ListDrawsRequest(promotion_id=pid)).draws
    assert sorted(d.prize_id for d in logged) == sorted(prizes)
    by_spend = promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=first_card, spend_minor=50_000, by="ops"))
    assert (by_spend.result, by_spend.granted) == (R.APPROVED, 0), "this plan gives no chances per spend"


def test_a_retried_numbered_draw_answers_the_first_draw_and_spends_nothing(promotions, server):
    # The car is drawn first and has one in stock: the first draw wins it,
    # its retry must answer the car again (not the consolation it would get now).
    lottery = P.LotteryTerms(prizes=[P.Prize(prize_id=7, name="car", probability_ppm=1_000_000, stock=1),
                                     P.Prize(prize_id=9, name="thanks", probability_ppm=0)], consolation_prize_id=9)
    pid = running(promotions, kind=P.PROMOTION_KIND_LOTTERY, name="numbered", lottery=lottery).promotion_id
    card = 75_100_000
    open_cards(server, card, 1)
    promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=card, count=2, by="ops"))
    first = promotions.Draw(P.DrawRequest(promotion_id=pid, card_id=card, draw_number=1))
    assert (first.result, first.prize_id, first.consolation, first.chances_left, first.replayed) == (R.APPROVED, 7, False, 1, False)
    retries = race(server, [lambda stub, index: stub.Draw(P.DrawRequest(promotion_id=pid, card_id=card, draw_number=1))] * 5)
    assert {(r.result, r.prize_id, r.prize_name, r.consolation, r.chances_left, r.replayed) for r in retries} == {
        (R.APPROVED, 7, "car", False, 1, True)}
    second = promotions.Draw(P.DrawRequest(promotion_id=pid, card_id=card, draw_number=2))
    assert (second.prize_id, second.consolation, second.chances_left, second.replayed) == (9, True, 0, False)
    again = promotions.Draw(P.DrawRequest(promotion_id=pid, card_id=card, draw_number=2))
    assert (again.result, again.prize_id, again.consolation, again.replayed) == (R.APPROVED, 9, True, True)
    logged = promotions.ListDraws(P.ListDrawsRequest(promotion_id=pid)).draws
    assert [d.prize_id for d in logged] == [7, 9], "one draw logged per number"
    spent = promotions.Draw(P.DrawRequest(promotion_id=pid, card_id=card, draw_number=3))
    assert spent.result == R.COUNTER_EXHAUSTED, "two chances, two draws: the retries spent none"


def test_a_retried_numbered_grant_gives_nothing_more(promotions, server):
    lottery = P.LotteryTerms(prizes=[P.Prize(prize_id=1, name="thanks", probability_ppm=1_000_000)], consolation_prize_id=1)
    pid = running(promotions, kind=P.PROMOTION_KIND_LOTTERY, name="granted", lottery=lottery).promotion_id
    card = 75_200_000
    open_cards(server, card, 1)

    def grant(number, count=3):
        return promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=card, count=count, by="ops", grant_number=number))

    first = grant(1)
    assert (first.result, first.granted, first.chances, first.replayed) == (R.APPROVED, 3, 3, False)
    retry = grant(1, count=5)
    assert (retry.result, retry.granted, retry.chances, retry.replayed) == (R.APPROVED, 3, 3, True)
    other = grant(2)
    assert (other.granted, other.chances, other.replayed) == (3, 6, False)
    unnumbered = [grant(0) for _ in range(2)]
    assert [g.chances for g in unnumbered] == [9, 12], "without a number every call grants"


# ---------------------------------------------------------------- risk


def test_a_velocity_limit_hit_by_many_concurrent_requests_is_never_exceeded(promotions, risk, server):
    lottery = P.LotteryTerms(prizes=[P.Prize(prize_id=1, name="thanks", probability_ppm=1_000_000)], consolation_prize_id=1,
                             chance_price_minor=100)
    pid = running(promotions, kind=P.PROMOTION_KIND_LOTTERY, name="bought", lottery=lottery).promotion_id
    card = 76_000_000
    open_cards(server, card, 1, points=10_000)
    limit = P.VelocityLimit(limit_id=9, name="sales per card per day", measure=P.RISK_MEASURE_SALE_COUNT, window=P.RISK_WINDOW_DAY, ceiling=5)
    assert risk.SetLimits(P.SetLimitsRequest(limits=[limit])).limits == [limit]
    # Flags are off until set: five small sales within ten minutes flag a card.
    risk.SetFlagRules(P.SetFlagRulesRequest(flags=P.FlagRules(small_sale_max_minor=1_000, small_sales_count=5, small_sales_window_s=600)))
    try:
        buy = lambda index: lambda stub, _: stub.BuyChances(P.BuyChancesRequest(terminal=context(606, index + 1), promotion_id=pid,
                                                                                 card_id=card, count=1))
        answers = race(server, [buy(index) for index in range(40)])
        codes = [answer.result for answer in answers]
        assert codes.count(R.APPROVED) == 5
        assert codes.count(R.COUNTER_LIMIT_REACHED) == 35
        assert {a.rule for a in answers if a.result != R.APPROVED} == {"risk 9 sales per card per day"}
        assert all(a.points_used == 100 for a in answers if a.result == R.APPROVED)
        first = next(index for index, a in enumerate(answers) if a.result == R.APPROVED)
        retry = promotions.BuyChances(P.BuyChancesRequest(terminal=context(606, first + 1), promotion_id=pid, card_id=card, count=1))
        assert (retry.result, retry.txn_id) == (R.APPROVED, answers[first].txn_id), "a retry gets the first answer"
        chances = promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=card, spend_minor=1, by="ops"))
        assert chances.chances == 5, "chances bought: exactly the sales the limit let through"
        points = Terminal(server.channel()).card(card).balances.points
        assert points == 10_000 - 5 * 100
        flags = risk.ListFlags(P.ListFlagsRequest(card_id=card)).flags
        assert [f.kind for f in flags if f.kind == P.FLAG_KIND_SMALL_SALES] == [P.FLAG_KIND_SMALL_SALES]
    finally:
        risk.SetLimits(P.SetLimitsRequest())
        risk.SetFlagRules(P.SetFlagRulesRequest(flags=P.FlagRules(small_sale_max_minor=1_000, small_sales_window_s=600)))
    with pytest.raises(grpc.RpcError) as error:
        risk.SetLimits(P.SetLimitsRequest(limits=[P.VelocityLimit(limit_id=1, name="x", measure=P.RISK_MEASURE_SALE_COUNT,
                                                                  window=P.RISK_WINDOW_DAY, ceiling=0)]))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith("limits[0].ceiling: ")


def test_a_blacklisted_card_is_refused_naming_the_entry(promotions, risk, server):
    lottery = P.LotteryTerms(prizes=[P.Prize(prize_id=1, name="thanks", probability_ppm=1)], consolation_prize_id=1)
    pid = running(promotions, kind=P.PROMOTION_KIND_LOTTERY, name="blocked", lottery=lottery).promotion_id
    card = 77_000_000
    open_cards(server, card, 1)
    until = now_ms() + 90 * 86_400_000
    added = risk.AddBlacklistEntry(P.AddBlacklistEntryRequest(card_id=card, reason="chargebacks", until_ms=until, by="risk-desk"))
    assert added.found and added.entry.until_ms == until
    refused = promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=card, count=1, by="ops"))
    assert (refused.result, refused.rule) == (R.CARD_BLACKLISTED, f"risk blacklist: frozen until {until}: chargebacks")
    assert card in [entry.card_id for entry in risk.ListBlacklist(P.ListBlacklistRequest()).entries]
    assert risk.RemoveBlacklistEntry(P.RemoveBlacklistEntryRequest(card_id=card, by="risk-desk")).found
    assert promotions.GrantChances(P.GrantChancesRequest(promotion_id=pid, card_id=card, count=1, by="ops")).result == R.APPROVED
    with pytest.raises(grpc.RpcError) as error:
        risk.AddBlacklistEntry(P.AddBlacklistEntryRequest(card_id=card, reason="", by="risk-desk"))
    assert error.value.code() == grpc.StatusCode.INVALID_ARGUMENT and error.value.details().startswith("reason: ")

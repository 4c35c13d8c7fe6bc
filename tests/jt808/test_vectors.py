"""Frames published in other JT/T 808 implementations' test suites decode to the values those
tests expect; where a suite built a frame from values, ours builds the same bytes.

Sources (each vector names its repository, file and test):

* traccar/traccar (real-device frames): src/test/java/org/traccar/protocol/
  Jt808ProtocolDecoderTest.java (testDecode), Jt808ProtocolEncoderTest.java (testEncode),
  Jt808FrameDecoderTest.java (testDecode);
* SmallChi/JT808 (frames its serializer builds from the values in the test):
  src/JT808.Protocol.Test/MessageBody/JT808_0x0100Test.cs, JT808_0x0102Test.cs,
  JT808_0x0704Test.cs, JT808_0x8100Test.cs, JT808_0x8103Test.cs, JT808_0x0104Test.cs,
  JT808_0x8300Test.cs, JT808_0x8003Test.cs, JT808_0x8600Test.cs, JT808_0x8604Test.cs,
  JT808_0x8606Test.cs.
"""

from __future__ import annotations

import struct

from agent.jt808 import area_bodies as ab
from agent.jt808 import messages as m
from agent.jt808.codec import decode_frame, encode_frame
from agent.jt808.describe import describe_frame


def frame(hexstr: str, strict: bool = True):  # type: ignore[no-untyped-def]
    return decode_frame(bytes.fromhex(hexstr.replace(" ", "")), strict=strict)


def satellites(loc: m.Location) -> int | None:
    v = loc.item(0x31)
    return v[0] if v else None


# --------------------------------------------------------------------------- traccar


def test_traccar_0704_2013_batch_satellites_14() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode, 1st vector: KEY_SATELLITES 14
    f = frame(
        "7e070400510144503762020002000101004c00040100000800030202301006f893e8001d0000009526081722"
        "1812140400000000170200000104000036c9030200002504000000002a02000030011f31010eea04020c8300"
        "ef0400000000037e"
    )
    assert not f.header.is_2019 and f.header.phone == "014450376202"
    _, locs = m.decode_batch(f.body)
    assert len(locs) == 1 and satellites(locs[0]) == 14


def test_traccar_0704_2019_batch_satellites_14() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode, 6th vector (a 2019 header): KEY_SATELLITES 14
    f = frame(
        "7e0704402d0100000866496077582164881d0001000028000000000000000701a00192091f2a470016000000"
        "0226050916422701040000258230010031010e507e"
    )
    assert f.header.is_2019 and f.header.version == 1
    assert f.header.phone.lstrip("0") == "866496077582164"  # traccar's device id
    _, (loc,) = m.decode_batch(f.body)
    assert satellites(loc) == 14


def test_traccar_0704_item_counts() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode: verifyPositions on two 0x0704 frames (a list
    # of positions, one per item)
    f = frame(
        "7E0704014301356777777707F5000801002600000000000000030159741206CBFD500172000000011605270906"
        "2401040000001D03020000002600000000000000030159746606CBFD50016B000000011605270906530104000"
        "0001D0302000000260000000000000003015975E406CBFE58013F0000000116052709072701040000001D03020"
        "00000260000000000000003015976DE06CBFF10012E0000000116052709075601040000001D03020000002600"
        "00000000000003015976BC06CBFED0012D0000000116052709083001040000001D0302000000260000000000"
        "000003015976FE06CBFEC001080000000116052709090001040000001D03020000002600000000000000030159"
        "76FE06CBFE7800FC0000000116052709093301040000001D0302000000260000000000000003015977A606CBFF"
        "3001080000000116052709100201040000001D030200001F7E"
    )
    _, locs = m.decode_batch(f.body)
    assert len(locs) == 8
    assert [loc.time_bcd for loc in locs][:2] == ["160527090624", "160527090653"]
    assert all(loc.lat_e6 > 22_000_000 for loc in locs)
    f2 = frame(
        "7E070400F30303000002450064000401003A000000000000000301618AC606C31F2000000000002918051420"
        "2847010400000000EB16000C00B28986061708003732585700060089FFFFFFFE003A00000000000000030161"
        "8AE806C31EB800000000009F180514202917010400000000EB16000C00B289860617080037325857000600"
        "89FFFFFFFE003A000000000000000301618AE806C31EB800000000009F180514202947010400000000EB16"
        "000C00B28986061708003732585700060089FFFFFFFE003A000001000000080301618AE806C31EB8000000"
        "00009F180514203006010400000000EB16000C00B28986061708003732585700060089FFFFFFFED77E"
    )
    assert len(m.decode_batch(f2.body)[1]) == 4


def test_traccar_0200_alarm_bit_7_main_power_undervoltage() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode: KEY_ALARM ALARM_LOW_BATTERY (+ a vendor
    # item's ALARM_REMOVING); traccar maps alarm bit 7 (main power undervoltage) to LOW_BATTERY
    f = frame(
        "7E020000480123456789010013000000800000000301597BC506CBFF6600EB00000155210726203531010400"
        "000000EB24000C00B28986047701207027150200060089FFFFEFFF0004002D0E10000600C5FFFFFFEF697E"
    )
    loc = m.decode_location(f.body)
    assert loc.alarm == 1 << 7
    assert "main power undervoltage" in describe_frame(bytes.fromhex(
        "7E020000480123456789010013000000800000000301597BC506CBFF6600EB00000155210726203531010400"
        "000000EB24000C00B28986047701207027150200060089FFFFEFFF0004002D0E10000600C5FFFFFFEF697E"
    ))["body"]["alarms"]  # fmt: skip
    # status 0x00000003: ACC on, positioned; 0x01597BC5, 0x06CBFF66 micro-degrees (Shenzhen);
    # the time is GMT+8
    assert loc.status == 3
    assert (loc.lat_e6, loc.lon_e6) == (0x01597BC5, 0x06CBFF66) == (22_641_605, 114_032_486)
    assert loc.time_bcd == "210726203531"
    assert loc.time == 1627302931.0  # 2021-07-26 12:35:31 UTC


def test_traccar_heartbeat_and_authentication_2013() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode: verifyNull on a 0x0002 and a 0x0102 frame
    hb = frame("7e0002000004304832546500b7ca7e")
    assert hb.msg_id == m.T_HEARTBEAT and hb.body == b"" and hb.header.phone == "043048325465"
    auth = frame("7E0102000E013511221122000661757468656E7469636174696F6E3F7E")
    assert m.decode_authentication(auth.body, False).code == "authentication"


def test_traccar_2019_registration_with_a_wrong_body_length() -> None:
    # traccar Jt808ProtocolDecoderTest.testDecode: verifyNull on this 2019 0x0100 (a real device:
    # its body properties say 92 bytes, the body has 94; traccar does not check). Our terminal
    # refuses such a frame; `edge-agent jt808 decode` shows it with the problem named.
    hexstr = (
        "7e0100405c0100000866496077582164521800000000000000000000000000000000004d443330300000000000"
        "000000000000000000000000000000000000003836363439363037373538323136340000000000000000000000"
        "0000000004000000000000000000000000000000007a7e"
    )
    out = describe_frame(bytes.fromhex(hexstr))
    assert out["message_id"] == "0x0100" and out["standard"] == "JT/T 808-2019"
    assert out["phone"] == "00000866496077582164"
    assert "body properties say 92" in out["problems"][0]


def test_traccar_platform_text_message_2013() -> None:
    # traccar Jt808ProtocolEncoderTest.testEncode: a 0x8300 (flag 1, "Test, Command, 123#") to a
    # device whose id traccar writes as hex (not BCD): read leniently
    f = frame(
        "7e830000140b3a73ce2ff2000001546573742c20436f6d6d616e642c2031323323a57e", strict=False
    )
    t = m.decode_text(f.body, v2019=False)
    assert (t.flags, t.text) == (1, "Test, Command, 123#")
    assert any("not BCD" in p for p in f.problems)


# --------------------------------------------------------------------------- SmallChi


def test_smallchi_0100_registration_2019_same_bytes() -> None:
    # SmallChi JT808_0x0100Test.Test2019_1 / Test2019_2
    expected = (
        "7E010040540100000000000123456789000A00280032313233340000000000000073 6D616C6C6368693132"
        "330000000000000000000000000000000000000043484931323300000000000000000000000000000000000000"
        "000000000001D4C1413132333435B27E"
    ).replace(" ", "")
    reg = m.Registration(40, 50, "1234", "smallchi123", "CHI123", 1, "粤A12345")
    body = m.encode_registration(reg, v2019=True)
    assert encode_frame(0x0100, body, phone="123456789", serial=10).hex().upper() == expected
    f = frame(expected)
    assert m.decode_registration(f.body, True) == reg
    assert f.header.phone.lstrip("0") == "123456789" and f.header.serial == 10


def test_smallchi_0100_registration_2013_same_bytes() -> None:
    # SmallChi JT808_0x0100Test.Test1 / Test1_1
    expected = (
        "7E0100002D000123456789000A002800323132333400736D616C6C6368693132330000000000000000004348"
        "493132330001D4C14131323334358A7E"
    )
    reg = m.Registration(40, 50, "1234", "smallchi123", "CHI123", 1, "粤A12345")
    body = m.encode_registration(reg, v2019=False)
    assert (
        encode_frame(0x0100, body, phone="123456789", serial=10, version=None).hex().upper()
        == expected
    )
    assert m.decode_registration(frame(expected).body, False) == reg


def test_smallchi_0102_authentication_2019() -> None:
    # SmallChi JT808_0x0102Test.Test2019_1 / Test2019_2
    body = bytes.fromhex(
        "05343536313231323334353637383930616263646576322E302E300000000000000000000000000000"
    )
    a = m.Authentication("45612", "1234567890abcde", "v2.0.0")
    assert m.encode_authentication(a, v2019=True) == body
    assert m.decode_authentication(body, True) == a


def test_smallchi_8100_register_responses() -> None:
    # SmallChi JT808_0x8100Test.Test2 (success, code "123456") and Test4 (4: terminal not in DB)
    ok = frame("7E81000009012345678900000A006400313233343536687E")
    assert m.decode_register_response(ok.body) == m.RegisterResponse(100, 0, "123456")
    refused = frame("7E81000003012345678900000A006404617E")
    rr = m.decode_register_response(refused.body)
    assert (rr.serial, rr.result) == (100, 4)
    assert m.REGISTER_RESULTS[rr.result] == "terminal not in the database"


def test_smallchi_0704_batch() -> None:
    # SmallChi JT808_0x0704Test.Test1 / Test2: two positions, type 0 (normal batch)
    hexstr = (
        "7E0704005311223344556622B80002000026000000010000000200BA7F0E07E4F11C0028003C000018071510"
        "1010010400000064020200370026000000020000000100CB735507E6A32300290036007818071510103001040"
        "000006002020042D47E"
    )
    f = frame(hexstr)
    assert (f.header.phone, f.header.serial) == ("112233445566", 8888)
    kind, (a, b) = m.decode_batch(f.body)
    assert kind == m.BATCH_NORMAL
    assert (a.alarm, a.status, a.lat_e6, a.lon_e6, a.speed_dkmh, a.direction) == (
        1, 2, 12222222, 132444444, 60, 0
    )  # fmt: skip
    assert a.time_bcd == "180715101010"
    assert struct.unpack(">I", a.item(0x01) or b"")[0] == 100  # mileage
    assert struct.unpack(">H", a.item(0x02) or b"")[0] == 55  # fuel
    assert (b.alarm, b.altitude_m, b.direction) == (2, 41, 120)
    # and our encoder writes the same body from the same values
    assert m.encode_batch([m.encode_location(a), m.encode_location(b)], 0) == f.body


def test_smallchi_8103_and_0104_parameters() -> None:
    # SmallChi JT808_0x8103Test.Test1_1 (0x0001 = 10) and Test2_1 (+ 0x0013 "www.baidu.com");
    # JT808_0x0104Test.Test2_1 (the answer to serial 20)
    f = frame("7E8103000A000123456789000A0100000001040000000A057E")
    assert m.decode_params(f.body) == [(0x0001, struct.pack(">I", 10))]
    two = bytes.fromhex("0200000001040000000A000000130D7777772E62616964752E636F6D")
    assert m.decode_params(two) == [(0x0001, b"\x00\x00\x00\x0a"), (0x0013, b"www.baidu.com")]
    ans = frame(
        "7E0104001E000123456789000A00140200000001040000000A000000130D7777772E62616964752E636F6DF27E"
    )
    serial, items = m.decode_params_answer(ans.body)
    assert serial == 20 and items == m.decode_params(two)
    assert m.encode_params_answer(20, items) == ans.body


def test_smallchi_8300_text_2019() -> None:
    # SmallChi JT808_0x8300Test.Test_2019_1 / Test_2019_2
    hexstr = "7E8300400E010000000001234567890000010501736D616C6C63686920353138417E"
    f = frame(hexstr)
    t = m.decode_text(f.body, True)
    assert (t.flags, t.kind, t.text) == (5, 1, "smallchi 518")
    assert (
        encode_frame(0x8300, m.encode_text(t), phone="012345678900", serial=1).hex().upper()
        == hexstr
    )


def test_smallchi_8003_resend_request_2013() -> None:
    # SmallChi JT808_0x8003Test.Test2: serial 1234, 2 packages, ids 0x0102 0x0203 (BYTE count)
    assert m.decode_resend_request(bytes.fromhex("04D20201020203"), v2019=False) == (
        1234,
        [0x0102, 0x0203],
    )


def test_smallchi_8600_circles_2013() -> None:
    # SmallChi JT808_0x8600Test.Test2: 3 circles, type 1 (add); the first with attribute 222
    # (0xDE: speed limit 60 km/h / 200 s, bit 0 clear so no times)
    body = bytes.fromhex(
        "0103000005F200DE075BCD15075BCD15000000C8003CC8000005F30000075BCD15075BCD15000000C8000005"
        "F408A3075BCD15075BCD15000000C8181018000012181019000012003CC8"
    )
    action, (a, b, c) = ab.decode_circles(body, v2019=False)
    assert action == ab.SET_ADD
    assert (a.id, a.attribute, a.radius_m, a.times) == (1522, 222, 200, None)
    assert a.limit == ab.Limit(60, 200)
    # attribute 0xDE has bits 6 and 7: south and west, so the signs are ours to apply
    assert (a.lat_e6, a.lon_e6) == (-123456789, -123456789)
    assert (b.id, b.attribute, b.limit, b.lat_e6) == (1523, 0, None, 123456789)
    assert c.times == ("181018000012", "181019000012") and c.limit == ab.Limit(60, 200)
    assert ab.encode_circles(action, [a, b, c], v2019=False) == body


def test_smallchi_8604_polygon_2013() -> None:
    # SmallChi JT808_0x8604Test.Test2: id 1234, attribute 1 (by time), two vertices
    body = bytes.fromhex("000004D200011811200000121811210000120002075BCD15075BCD14075BCCBC075BCCBD")
    p = ab.decode_polygon(body, v2019=False)
    assert (p.id, p.attribute, p.limit) == (1234, 1, None)
    assert p.times == ("181120000012", "181121000012")
    assert p.points == ((123456789, 123456788), (123456700, 123456701))
    assert ab.encode_polygon(p, v2019=False) == body


def test_smallchi_8606_route_2013() -> None:
    # SmallChi JT808_0x8606Test.Test2: route 9999, attribute 1268 (bit 0 clear: no times),
    # point 1000 (segment attribute 89: driving-time thresholds 50/123, south), point 1001
    # (attribute 50: speed limit 42 km/h for 26 s)
    body = bytes.fromhex(
        "0000270F04F40002000003E800000507075BCD15075BCD1438590032007B000003E900002EE7075BCD0C075B"
        "CD0D4B32002A1A"
    )
    rt = ab.decode_route(body, v2019=False)
    assert (rt.id, rt.attribute, rt.times) == (9999, 1268, None)
    p0, p1 = rt.points
    assert (p0.point_id, p0.segment_id, p0.width_m, p0.attribute) == (1000, 1287, 56, 89)
    assert p0.thresholds == (50, 123) and p0.limit is None
    assert (p0.lat_e6, p0.lon_e6) == (123456789, -123456788)  # 89 = bits 0, 3, 4, 6: west
    assert (p1.point_id, p1.segment_id, p1.width_m) == (1001, 12007, 75)
    assert p1.limit == ab.Limit(42, 26) and p1.thresholds is None
    assert ab.encode_route(rt, v2019=False) == body

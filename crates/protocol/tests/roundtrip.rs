//! Property tests: every frame survives encode → decode in both encodings, and payloads cross
//! encodings by the rules of SPEC section 4.

use bytes::Bytes;
use proptest::prelude::*;
use protocol::codec::{self, decode_client};
use protocol::frame::{PresenceEvent, RoutedFrame};
use protocol::*;

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<u64>().prop_map(serde_json::Value::from),
        (-1e9f64..1e9).prop_map(serde_json::Value::from),
        ".{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
            prop::collection::btree_map("[a-z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

fn msgpack_value() -> impl Strategy<Value = rmpv::Value> {
    let leaf = prop_oneof![
        Just(rmpv::Value::Nil),
        any::<bool>().prop_map(rmpv::Value::from),
        any::<i64>().prop_map(rmpv::Value::from),
        any::<u64>().prop_map(rmpv::Value::from),
        (-1e9f64..1e9).prop_map(rmpv::Value::from),
        ".{0,12}".prop_map(|s: String| rmpv::Value::from(s)),
        prop::collection::vec(any::<u8>(), 0..16).prop_map(rmpv::Value::Binary),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(rmpv::Value::Array),
            prop::collection::vec(("[a-z]{1,6}", inner), 0..4).prop_map(|kv| {
                rmpv::Value::Map(kv.into_iter().map(|(k, v)| (k.into(), v)).collect())
            }),
        ]
    })
}

fn payload(encoding: Encoding) -> BoxedStrategy<Payload> {
    match encoding {
        Encoding::Json => json_value()
            .prop_map(|v| Payload::from_json_value(&v))
            .boxed(),
        Encoding::MsgPack => msgpack_value()
            .prop_map(|v| {
                let mut out = Vec::new();
                rmpv::encode::write_value(&mut out, &v).unwrap();
                Payload::MsgPack(out.into())
            })
            .boxed(),
    }
}

fn encoding() -> impl Strategy<Value = Encoding> {
    prop_oneof![Just(Encoding::Json), Just(Encoding::MsgPack)]
}

fn room() -> impl Strategy<Value = RoomName> {
    "[A-Za-z0-9_:.@/-]{1,128}".prop_map(|s| RoomName::parse(&s).unwrap())
}

fn request_id() -> impl Strategy<Value = Option<RequestId>> {
    prop::option::of(prop_oneof![
        any::<i64>().prop_map(RequestId::Int),
        ".{0,10}".prop_map(RequestId::Str),
    ])
}

fn conn() -> impl Strategy<Value = ConnectionId> {
    "[A-Za-z0-9_-]{1,30}".prop_map(ConnectionId::from_string)
}

fn client_frame(enc: Encoding) -> impl Strategy<Value = ClientFrame> {
    prop_oneof![
        (
            request_id(),
            room(),
            prop::option::of(any::<u64>()),
            prop::option::of("[a-z0-9]{1,8}")
        )
            .prop_map(|(id, room, since, epoch)| ClientFrame::Join {
                id,
                room,
                since,
                epoch
            }),
        (request_id(), room()).prop_map(|(id, room)| ClientFrame::Leave { id, room }),
        (request_id(), room(), payload(enc), any::<bool>()).prop_map(
            |(id, room, data, exclude_self)| ClientFrame::Publish {
                id,
                room,
                data,
                exclude_self
            }
        ),
        (request_id(), conn(), payload(enc)).prop_map(|(id, to, data)| ClientFrame::Send {
            id,
            to,
            data
        }),
        (request_id(), "[A-Za-z0-9._-]{1,60}")
            .prop_map(|(id, token)| ClientFrame::Refresh { id, token }),
        request_id().prop_map(|id| ClientFrame::Ping { id }),
    ]
}

fn server_frame(enc: Encoding) -> impl Strategy<Value = ServerFrame> {
    let epoch = || prop::option::of("[a-z0-9]{1,8}");
    prop_oneof![
        (conn(), "[a-z0-9-]{1,20}", encoding(), any::<u64>()).prop_map(|(c, n, p, h)| {
            ServerFrame::Welcome {
                connection_id: c,
                node: NodeId::new(n),
                protocol: p,
                heartbeat_ms: h,
            }
        }),
        (
            request_id(),
            prop::option::of(any::<u64>()),
            epoch(),
            prop::option::of(any::<bool>())
        )
            .prop_map(|(id, offset, epoch, recovered)| ServerFrame::Ack {
                id,
                offset,
                epoch,
                recovered
            }),
        (
            room(),
            payload(enc),
            prop::option::of(conn()),
            prop::option::of(any::<u64>()),
            epoch()
        )
            .prop_map(|(room, data, from, offset, epoch)| ServerFrame::Message {
                room,
                data,
                from,
                offset,
                epoch
            }),
        (prop::option::of(conn()), payload(enc))
            .prop_map(|(from, data)| ServerFrame::Direct { from, data }),
        ("[a-z$]{1,12}", request_id(), payload(enc))
            .prop_map(|(route, id, data)| ServerFrame::RouteResponse { route, id, data }),
        (room(), any::<bool>(), conn()).prop_map(|(room, j, connection_id)| {
            ServerFrame::Presence {
                room,
                event: if j {
                    PresenceEvent::Join
                } else {
                    PresenceEvent::Leave
                },
                connection_id,
            }
        }),
        request_id().prop_map(|id| ServerFrame::Pong { id }),
        (
            request_id(),
            prop_oneof![
                Just(ErrorCode::BadRequest),
                Just(ErrorCode::UnknownAction),
                Just(ErrorCode::Forbidden),
                Just(ErrorCode::NotFound),
                Just(ErrorCode::TooLarge),
                Just(ErrorCode::RateLimited),
                Just(ErrorCode::RoomLimit),
                Just(ErrorCode::IntegrationFailed),
                Just(ErrorCode::Unavailable)
            ],
            ".{0,40}"
        )
            .prop_map(|(id, code, message)| ServerFrame::Error { id, code, message }),
    ]
}

fn client_frame_any() -> impl Strategy<Value = (Encoding, ClientFrame)> {
    encoding().prop_flat_map(|e| client_frame(e).prop_map(move |f| (e, f)))
}

fn server_frame_any() -> impl Strategy<Value = (Encoding, ServerFrame)> {
    encoding().prop_flat_map(|e| server_frame(e).prop_map(move |f| (e, f)))
}

proptest! {
    #[test]
    fn client_frames_round_trip((enc, frame) in client_frame_any()) {
        let wire = frame.encode(enc).unwrap();
        prop_assert_eq!(wire.encoding(), enc);
        let back = decode_client(enc, wire.bytes(), enc.is_text()).unwrap();
        // The rate limit's id-only read finds the same id as the full decode.
        prop_assert_eq!(codec::request_id(enc, wire.bytes(), enc.is_text()), frame.id().cloned());
        prop_assert_eq!(back, frame);
    }

    #[test]
    fn server_frames_round_trip((enc, frame) in server_frame_any()) {
        let wire = frame.encode(enc).unwrap();
        if enc == Encoding::Json {
            prop_assert!(std::str::from_utf8(wire.bytes()).is_ok());
        }
        let back = ServerFrame::decode(enc, wire.bytes()).unwrap();
        prop_assert_eq!(back, frame);
    }

    /// A JSON publish reaches MessagePack members with the same value, and back.
    #[test]
    fn json_payload_crosses_to_msgpack(v in json_value(), room in room()) {
        let frame = ServerFrame::Message { room, data: Payload::from_json_value(&v), from: None, offset: None, epoch: None };
        let wire = frame.encode(Encoding::MsgPack).unwrap();
        let ServerFrame::Message { data, .. } = ServerFrame::decode(Encoding::MsgPack, wire.bytes()).unwrap() else {
            panic!("not a message")
        };
        prop_assert!(matches!(data, Payload::MsgPack(_)));
        prop_assert_eq!(data.to_json_value().unwrap(), v);
    }

    /// The size bound a publish checks instead of encoding holds for every frame and payload.
    #[test]
    fn size_bounds_bound_the_encoded_size(
        (enc, frame) in server_frame_any(),
        jv in json_value(),
        mp in payload(Encoding::MsgPack),
        room in room(),
        from in prop::option::of(conn()),
    ) {
        for e in [Encoding::Json, Encoding::MsgPack] {
            prop_assert!(frame.encode(e).unwrap().len() <= frame.size_bound(e), "{:?} {:?}", frame, e);
            for data in [Payload::from_json_value(&jv), mp.clone()] {
                let m = ServerFrame::Message { room: room.clone(), data, from: from.clone(), offset: None, epoch: None };
                let len = m.encode(e).unwrap().len();
                prop_assert!(len <= m.size_bound(e), "{} > {} for {:?} in {:?}", len, m.size_bound(e), m, e);
            }
        }
        let _ = enc;
    }

    /// A MessagePack publish reaches JSON members with `bin` as base64 and everything else equal.
    #[test]
    fn msgpack_payload_crosses_to_json(data in payload(Encoding::MsgPack), room in room()) {
        let expected = data.to_json_value().unwrap();
        let frame = ServerFrame::Message { room, data, from: None, offset: None, epoch: None };
        let wire = frame.encode(Encoding::Json).unwrap();
        let parsed: serde_json::Value = serde_json::from_slice(wire.bytes()).unwrap();
        prop_assert_eq!(&parsed["data"], &expected);
    }

    #[test]
    fn envelopes_round_trip(room in room(), from in prop::option::of(conn()), ex in prop::option::of(conn()),
                            enc in encoding(), off in prop::option::of(any::<u64>()), tp in prop::option::of("[0-9a-f-]{10,55}")) {
        let data = match enc {
            Encoding::Json => Payload::Json(Bytes::from_static(br#"{"x":[1,2]}"#)),
            Encoding::MsgPack => Payload::MsgPack(Bytes::from_static(&[0x93, 1, 2, 3])),
        };
        let env = Envelope {
            origin: NodeId::new("node-a"),
            body: EnvelopeBody::Room { room, from, exclude: ex, data, offset: off, epoch: off.map(|_| "e1".into()) },
            traceparent: tp,
        };
        prop_assert_eq!(Envelope::decode(&env.encode()).unwrap(), env.clone());
        // Behind a position (a retained room's message as Redis publishes it), the position
        // wins over what the envelope carried.
        let positioned = Envelope::decode_positioned(&env.encode_positioned(7, "ep")).unwrap();
        let EnvelopeBody::Room { offset, epoch, .. } = &positioned.body else { unreachable!() };
        prop_assert_eq!((*offset, epoch.as_deref()), (Some(7), Some("ep")));
        prop_assert_eq!(Envelope::decode_positioned(&env.encode()).unwrap(), env);
    }

    /// Arbitrary bytes never panic the decoder.
    #[test]
    fn garbage_is_an_error_not_a_panic(bytes in prop::collection::vec(any::<u8>(), 0..64), enc in encoding(), text in any::<bool>()) {
        let _ = decode_client(enc, &Bytes::from(bytes.clone()), text);
        let _ = codec::request_id(enc, &Bytes::from(bytes.clone()), text);
        let _ = Envelope::decode(&bytes);
        let mut marked = b"#1:e:".to_vec();
        marked.extend_from_slice(&bytes);
        let _ = Envelope::decode_positioned(&marked);
    }

    /// Valid frames with bytes flipped, cut or repeated: adversarial input close to what the
    /// decoders accept, which random bytes rarely reach. Never a panic; a frame that still
    /// decodes has a payload that satisfies its invariant.
    #[test]
    fn mutated_frames_are_errors_or_sound_frames(
        (enc, frame) in client_frame_any(),
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
    ) {
        let mut bytes = frame.encode(enc).unwrap().bytes().to_vec();
        for (at, byte, op) in edits {
            if bytes.is_empty() { break; }
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.truncate(i),
                _ => { let tail = bytes[i..].to_vec(); bytes.extend_from_slice(&tail); }
            }
        }
        let bytes = Bytes::from(bytes);
        let _ = codec::request_id(enc, &bytes, enc.is_text());
        if let Ok(ClientFrame::Publish { data, .. } | ClientFrame::Send { data, .. }) = decode_client(enc, &bytes, enc.is_text()) {
            prop_assert!(data.check().is_ok());
        }
    }

    /// The MessagePack walker reads exactly the value rmpv reads, wherever rmpv can read one,
    /// and accepts every value with a JSON form.
    #[test]
    fn the_msgpack_walker_agrees_with_rmpv(v in msgpack_value(), junk in prop::collection::vec(any::<u8>(), 0..8)) {
        let mut bytes = Vec::new();
        rmpv::encode::write_value(&mut bytes, &v).unwrap();
        let len = bytes.len();
        prop_assert_eq!(protocol::codec::msgpack::check_value(&bytes), Ok(()));
        bytes.extend_from_slice(&junk);
        prop_assert_eq!(protocol::codec::msgpack::skip_value(&bytes, true), Ok(len));
    }

    /// Arbitrary MessagePack bytes: where rmpv reads a value, the walker reads the same length.
    #[test]
    fn the_msgpack_walker_agrees_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..48)) {
        let mut rd = &bytes[..];
        if rmpv::decode::read_value(&mut rd).is_ok() {
            let read = bytes.len() - rd.len();
            match protocol::codec::msgpack::skip_value(&bytes, false) {
                // rmpv reads the reserved marker 0xc1 as nil; the walker refuses it.
                Err(protocol::codec::msgpack::ScanError::Reserved) => prop_assert!(bytes[..read].contains(&0xc1)),
                other => prop_assert_eq!(other, Ok(read)),
            }
        }
    }
}

#[test]
fn deeply_nested_msgpack_data_is_a_bad_frame_not_a_stack_overflow() {
    // {"action":"publish","room":"r","data":[[[[...]]]]} with 100,000 levels.
    let mut bytes = vec![0x83];
    for (k, v) in [("action", "publish"), ("room", "r")] {
        rmp::encode::write_str(&mut bytes, k).unwrap();
        rmp::encode::write_str(&mut bytes, v).unwrap();
    }
    rmp::encode::write_str(&mut bytes, "data").unwrap();
    bytes.extend(std::iter::repeat_n(0x91u8, 100_000));
    bytes.push(0xc0);
    let e = decode_client(Encoding::MsgPack, &Bytes::from(bytes), false).unwrap_err();
    assert!(e.error.to_string().contains("nested deeper"), "{e:?}");
}

#[test]
fn binary_bin_reaches_json_as_base64() {
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &rmpv::Value::Binary(b"hi".to_vec())).unwrap();
    let frame = ServerFrame::Direct {
        from: None,
        data: Payload::MsgPack(out.into()),
    };
    let wire = frame.encode(Encoding::Json).unwrap();
    assert_eq!(
        wire.bytes().as_ref(),
        br#"{"type":"direct","from":null,"data":"aGk="}"#
    );
}

#[test]
fn decode_errors_are_precise_and_keep_the_id() {
    let dec =
        |s: &'static str| decode_client(Encoding::Json, &Bytes::from_static(s.as_bytes()), true);
    let e = dec(r#"{"action":"join","id":7}"#).unwrap_err();
    assert_eq!(e.id, Some(RequestId::Int(7)));
    assert_eq!(e.error, DecodeError::MissingField("room"));
    let e = dec(r#"{"action":"join","id":"a","room":5}"#).unwrap_err();
    assert_eq!(e.id, Some(RequestId::Str("a".into())));
    assert!(matches!(
        e.error,
        DecodeError::WrongType { field: "room", .. }
    ));
    let e = dec(r#"{"action":"join","room":"a b"}"#).unwrap_err();
    assert!(matches!(e.error, DecodeError::BadRoom(_)));
    assert!(matches!(
        dec("not json").unwrap_err().error,
        DecodeError::NotAFrame(_)
    ));
    assert!(matches!(
        dec("[1,2]").unwrap_err().error,
        DecodeError::NotAFrame(_)
    ));
    let e = dec(r#"{"action":"publish","room":"r"}"#).unwrap_err();
    assert_eq!(e.error, DecodeError::MissingField("data"));
    let e = dec(r#"{"action":"publish","room":"r","data":1,"exclude_self":"yes"}"#).unwrap_err();
    assert!(matches!(
        e.error,
        DecodeError::WrongType {
            field: "exclude_self",
            ..
        }
    ));
    let e = decode_client(Encoding::Json, &Bytes::from_static(b"{}"), false).unwrap_err();
    assert!(matches!(
        e.error,
        DecodeError::WrongMessageType("binary", "JSON")
    ));
    let e = decode_client(Encoding::MsgPack, &Bytes::from_static(b"{}"), true).unwrap_err();
    assert!(matches!(
        e.error,
        DecodeError::WrongMessageType("text", "MessagePack")
    ));
}

#[test]
fn unknown_actions_are_routed_whole() {
    let raw = Bytes::from_static(br#"{"action":"sendmessage","id":1,"text":"hi"}"#);
    let f = decode_client(Encoding::Json, &raw, true).unwrap();
    assert_eq!(
        f,
        ClientFrame::Routed(RoutedFrame {
            id: Some(RequestId::Int(1)),
            action: Some("sendmessage".into()),
            raw: raw.clone(),
            encoding: Encoding::Json
        })
    );
    let f = decode_client(Encoding::Json, &Bytes::from_static(br#"{"x":1}"#), true).unwrap();
    assert!(matches!(
        f,
        ClientFrame::Routed(RoutedFrame { action: None, .. })
    ));
}

#[test]
fn msgpack_ext_in_data_is_a_bad_frame() {
    let frame = rmpv::Value::Map(vec![
        ("action".into(), "publish".into()),
        ("room".into(), "r".into()),
        ("data".into(), rmpv::Value::Ext(3, vec![1, 2])),
    ]);
    let mut out = Vec::new();
    rmpv::encode::write_value(&mut out, &frame).unwrap();
    let e = decode_client(Encoding::MsgPack, &out.into(), false).unwrap_err();
    assert!(matches!(
        e.error,
        DecodeError::Unrepresentable { field: "data", .. }
    ));
}

#[test]
fn negotiation_follows_the_spec() {
    use protocol::codec::{negotiate, Negotiated};
    assert_eq!(negotiate([]), Negotiated::Default);
    assert_eq!(
        negotiate(["x", "wsgate.v1.msgpack", "wsgate.v1.json"]),
        Negotiated::Chosen(Encoding::MsgPack)
    );
    assert_eq!(
        negotiate(["wsgate.v1.json", "wsgate.v1.msgpack"]),
        Negotiated::Chosen(Encoding::Json)
    );
    assert_eq!(negotiate(["graphql-ws"]), Negotiated::Unsupported);
}

#[test]
fn queries_and_replies_round_trip() {
    let q = Envelope {
        origin: NodeId::new("a"),
        body: EnvelopeBody::Query {
            id: 7,
            reply_to: NodeId::new("a"),
            query: Query::Room {
                room: "r".into(),
                ids: true,
            },
        },
        traceparent: None,
    };
    assert_eq!(Envelope::decode(&q.encode()).unwrap(), q);
    let info = ConnectionInfo {
        id: "c".into(),
        node: "b".into(),
        connected_at_ms: 1,
        last_active_ms: 2,
        source_ip: "127.0.0.1".into(),
        sub: Some("s".into()),
        rooms: vec!["r".into()],
    };
    let r = Envelope {
        origin: NodeId::new("b"),
        body: EnvelopeBody::Reply {
            id: 7,
            reply: Reply::Connection(Some(info)),
        },
        traceparent: None,
    };
    assert_eq!(Envelope::decode(&r.encode()).unwrap(), r);
}

#[test]
fn a_position_without_a_room_envelope_or_a_number_is_refused() {
    let direct = Envelope {
        origin: NodeId::new("a"),
        body: EnvelopeBody::Disconnect {
            to: ConnectionId::from_string("c".to_owned()),
            code: 1000,
        },
        traceparent: None,
    };
    assert!(Envelope::decode_positioned(&direct.encode_positioned(1, "e")).is_err());
    let mut bad = b"#x:e:".to_vec();
    bad.extend_from_slice(&direct.encode());
    assert!(Envelope::decode_positioned(&bad).is_err());
    assert!(Envelope::decode_positioned(b"#12").is_err());
}

#[test]
fn presence_events_round_trip() {
    for event in [PresenceEvent::Join, PresenceEvent::Leave] {
        let e = Envelope {
            origin: NodeId::new("a"),
            body: EnvelopeBody::Presence {
                room: RoomName::parse("chat:1").unwrap(),
                event,
                connection: ConnectionId::from_string("c1".to_owned()),
            },
            traceparent: None,
        };
        assert_eq!(Envelope::decode(&e.encode()).unwrap(), e);
        assert_eq!(e.room().map(|r| r.as_str()), Some("chat:1"));
    }
}

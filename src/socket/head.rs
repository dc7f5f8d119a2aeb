//! A client frame's header (RFC 6455 5.2), parsed from whatever bytes have arrived.
//!
//! Sans I/O: [`parse`] looks at a slice and says whether a whole header is there, so the
//! reader can wait for readiness without holding a buffer and parse from a buffer lent for one
//! read. Every rule that can be judged from the header alone is judged here, before the
//! payload is buffered (the reader judges every header it holds bytes for): a client cannot
//! make the server hold a frame it will refuse.

use fastwebsockets::OpCode;

use crate::protocol::CloseCode;

/// Control frames carry at most 125 bytes of payload (RFC 6455 5.5).
pub(crate) const MAX_CONTROL_PAYLOAD: usize = 125;

/// The longest header a client may send: 2 bytes, 8 of extended length, 4 of mask.
pub(crate) const MAX_HEAD: usize = 14;

/// What a header says of its frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Head {
    pub fin: bool,
    pub opcode: OpCode,
    /// The masking key (a client's frames are always masked).
    pub mask: [u8; 4],
    /// The header's own length in bytes.
    pub head_len: usize,
    /// The payload's length in bytes.
    pub payload_len: usize,
}

impl Head {
    /// The whole frame's length: header and payload.
    pub(crate) fn frame_len(&self) -> usize {
        self.head_len + self.payload_len
    }
}

/// Parses the header at the front of `bytes`: `Ok(None)` until all of it has arrived.
///
/// `max_data_payload` is the most a data frame may carry (what is left of the message budget);
/// a larger one is refused with 1009 as soon as its length is known. Refused with 1002: a
/// reserved bit set (no extension is ever negotiated), a reserved opcode, an unmasked frame
/// (RFC 6455 5.1: a server must close on one), a fragmented control frame, or a control frame
/// over 125 bytes.
pub(crate) fn parse(bytes: &[u8], max_data_payload: usize) -> Result<Option<Head>, CloseCode> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0b0111_0000 != 0 {
        return Err(CloseCode::ProtocolError);
    }
    let opcode = OpCode::try_from(first & 0b0000_1111).map_err(|_| CloseCode::ProtocolError)?;
    let fin = first & 0b1000_0000 != 0;
    if second & 0b1000_0000 == 0 {
        return Err(CloseCode::ProtocolError);
    }
    let (length_bytes, short_len) = match second & 0b0111_1111 {
        126 => (2, None),
        127 => (8, None),
        len => (0, Some(usize::from(len))),
    };
    // The length alone may be enough to refuse the frame: it is judged before the mask is in.
    let length_end = 2 + length_bytes;
    if bytes.len() < length_end {
        return Ok(None);
    }
    let payload_len = match short_len {
        Some(len) => len,
        None => {
            let mut be = [0u8; 8];
            be[8 - length_bytes..].copy_from_slice(&bytes[2..length_end]);
            // Past usize (on a 32-bit target) is past any budget.
            usize::try_from(u64::from_be_bytes(be)).unwrap_or(usize::MAX)
        }
    };
    let is_control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
    if is_control && (!fin || payload_len > MAX_CONTROL_PAYLOAD) {
        return Err(CloseCode::ProtocolError);
    }
    if !is_control && payload_len > max_data_payload {
        return Err(CloseCode::MessageTooBig);
    }
    let head_len = length_end + 4;
    if bytes.len() < head_len {
        return Ok(None);
    }
    let mask = bytes[length_end..head_len]
        .try_into()
        .expect("four bytes of mask");
    Ok(Some(Head {
        fin,
        opcode,
        mask,
        head_len,
        payload_len,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MASK: [u8; 4] = [1, 2, 3, 4];

    fn head(first: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut bytes = vec![first];
        bytes.extend_from_slice(len_bytes);
        bytes[1] |= 0x80;
        bytes.extend_from_slice(&MASK);
        bytes
    }

    #[test]
    fn headers_of_every_length_form_parse_once_complete() {
        for (len_bytes, payload_len, head_len) in [
            (vec![5u8], 5, 6),
            (vec![126, 0x01, 0x00], 256, 8),
            (vec![127, 0, 0, 0, 0, 0, 1, 0, 0], 65536, 14),
        ] {
            let bytes = head(0x81, &len_bytes);
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut], usize::MAX), Ok(None), "cut at {cut}");
            }
            assert_eq!(
                parse(&bytes, usize::MAX),
                Ok(Some(Head {
                    fin: true,
                    opcode: OpCode::Text,
                    mask: MASK,
                    head_len,
                    payload_len,
                }))
            );
        }
    }

    #[test]
    fn rule_breaking_headers_are_refused_with_their_codes() {
        let unmasked = [0x81u8, 0x05];
        for (bytes, code) in [
            (head(0xC1, &[5]), CloseCode::ProtocolError), // RSV1
            (head(0x83, &[5]), CloseCode::ProtocolError), // reserved opcode
            (head(0x09, &[5]), CloseCode::ProtocolError), // fragmented ping
            (head(0x8A, &[126, 0, 126]), CloseCode::ProtocolError), // pong of 126
            (head(0x88, &[126, 0, 126]), CloseCode::ProtocolError), // close of 126
            (unmasked.to_vec(), CloseCode::ProtocolError),
        ] {
            assert_eq!(parse(&bytes, 1000), Err(code), "{bytes:x?}");
        }
    }

    #[test]
    fn a_data_frame_over_the_budget_is_refused_before_its_mask_arrives() {
        let bytes = head(0x82, &[127, 0xff, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse(&bytes[..10], 4096), Err(CloseCode::MessageTooBig));
        assert_eq!(
            parse(&head(0x81, &[101]), 100),
            Err(CloseCode::MessageTooBig)
        );
        assert!(parse(&head(0x81, &[100]), 100).unwrap().is_some());
        // Control frames are judged against 125, not the message budget.
        assert!(parse(&head(0x89, &[125]), 0).unwrap().is_some());
    }
}

//! A strict, bounded decoder for Go's `encoding/gob`, enough for the values the Go
//! clip wrote into its archives: structs, slices, arrays, maps, strings, byte
//! slices, integers, booleans and `GobEncoder` values (`time.Time`). Interfaces,
//! floats and complex numbers are refused (no Go-clip type has them).
//!
//! One call decodes one top-level value from one encoder's stream: its type
//! definitions, then the value. Every length and count is checked against the bytes
//! that remain, nesting is limited, and anything unexpected (an unknown type id, a
//! field number past the struct's fields, a non-zero singleton delta, trailing
//! bytes) is an error saying what and where.

use std::collections::HashMap;
use std::sync::Arc;

/// A gob decoding failure: what was wrong, and the byte offset in the stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GobError {
    /// Offset of the byte at fault from the start of the stream.
    pub offset: usize,
    /// What was wrong.
    pub what: String,
}

impl std::fmt::Display for GobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "gob at byte {}: {}", self.offset, self.what)
    }
}

type Result<T> = std::result::Result<T, GobError>;

/// A decoded value. Go strings are kept as bytes (paths need not be UTF-8).
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// `bool`.
    Bool(bool),
    /// Any signed integer type.
    Int(i64),
    /// Any unsigned integer type.
    Uint(u64),
    /// `string` or `[]byte`.
    Bytes(Vec<u8>),
    /// A slice or an array.
    List(Vec<Value>),
    /// A map, in stream order.
    Map(Vec<(Value, Value)>),
    /// A struct: the fields that were sent (gob omits zero values), by name.
    Struct(Vec<(Arc<str>, Value)>),
    /// A `GobEncoder`/`BinaryMarshaler` value: the type's name and its bytes.
    Encoded(Arc<str>, Vec<u8>),
}

impl Value {
    /// A struct field by name (`None` if it was not sent, i.e. is zero, or this is
    /// not a struct).
    pub fn field(&self, name: &str) -> Option<&Value> {
        match self {
            Value::Struct(f) => f.iter().find(|(n, _)| &**n == name).map(|(_, v)| v),
            _ => None,
        }
    }
}

// Predefined type ids (encoding/gob type.go).
const T_BOOL: i64 = 1;
const T_INT: i64 = 2;
const T_UINT: i64 = 3;
const T_FLOAT: i64 = 4;
const T_BYTES: i64 = 5;
const T_STRING: i64 = 6;
const T_COMPLEX: i64 = 7;
const T_INTERFACE: i64 = 8;
/// The first id a stream may define.
const FIRST_USER_ID: i64 = 64;

/// Nesting limit for values (Go-clip types nest at most 5 deep).
const MAX_DEPTH: usize = 32;
/// Limit on type definitions in one stream.
const MAX_TYPES: usize = 1024;

#[derive(Debug, Clone)]
enum WireType {
    Array { elem: i64, len: u64 },
    Slice { elem: i64 },
    Struct { fields: Vec<(Arc<str>, i64)> },
    Map { key: i64, elem: i64 },
    Encoder { name: Arc<str> },
}

struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// The end of the current message.
    end: usize,
}

impl<'a> Reader<'a> {
    fn err<T>(&self, what: impl Into<String>) -> Result<T> {
        Err(GobError {
            offset: self.pos,
            what: what.into(),
        })
    }

    fn remaining(&self) -> usize {
        self.end - self.pos
    }

    fn byte(&mut self) -> Result<u8> {
        if self.pos >= self.end {
            return self.err("unexpected end of message");
        }
        let b = self.buf[self.pos];
        self.pos += 1;
        Ok(b)
    }

    fn uint(&mut self) -> Result<u64> {
        let b = self.byte()?;
        if b < 0x80 {
            return Ok(b as u64);
        }
        let n = (!b).wrapping_add(1) as usize; // -int8(b)
        if n > 8 {
            return self.err(format!("an integer of {n} bytes"));
        }
        if self.remaining() < n {
            return self.err("unexpected end of message in an integer");
        }
        let mut v = 0u64;
        for _ in 0..n {
            v = (v << 8) | self.buf[self.pos] as u64;
            self.pos += 1;
        }
        Ok(v)
    }

    fn int(&mut self) -> Result<i64> {
        let u = self.uint()?;
        Ok(if u & 1 == 1 {
            !((u >> 1) as i64)
        } else {
            (u >> 1) as i64
        })
    }

    /// A count of items each taking at least `min_bytes`, checked against what
    /// remains.
    fn count(&mut self, min_bytes: usize) -> Result<usize> {
        let at = self.pos;
        let n = self.uint()?;
        if n > (self.remaining() / min_bytes.max(1)) as u64 {
            self.pos = at;
            return self.err(format!(
                "a count of {n} with {} bytes left",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    fn bytes(&mut self) -> Result<Vec<u8>> {
        let n = self.count(1)?;
        let v = self.buf[self.pos..self.pos + n].to_vec();
        self.pos += n;
        Ok(v)
    }

    fn string(&mut self) -> Result<String> {
        let at = self.pos;
        let b = self.bytes()?;
        String::from_utf8(b).map_err(|_| GobError {
            offset: at,
            what: "a type or field name that is not UTF-8".into(),
        })
    }
}

/// Decodes the one top-level value of a gob stream.
pub fn decode(stream: &[u8]) -> Result<Value> {
    decode_top(stream, None)
}

/// Decodes a gob stream whose top-level value is a slice, handing each element to
/// `each` as it is decoded instead of building the list (an index of a million
/// nodes is converted node by node).
pub fn decode_each(stream: &[u8], each: &mut dyn FnMut(Value) -> Result<()>) -> Result<()> {
    decode_top(stream, Some(each)).map(|_| ())
}

fn decode_top(
    stream: &[u8],
    mut each: Option<&mut dyn FnMut(Value) -> Result<()>>,
) -> Result<Value> {
    let mut r = Reader {
        buf: stream,
        pos: 0,
        end: stream.len(),
    };
    let mut types: HashMap<i64, WireType> = HashMap::new();
    loop {
        if r.pos >= stream.len() {
            return r.err("the stream ends before its value");
        }
        r.end = stream.len();
        let len = r.count(1)?;
        if len == 0 {
            return r.err("an empty message");
        }
        r.end = r.pos + len;
        let id = r.int()?;
        if id < 0 {
            let id = -id;
            if id < FIRST_USER_ID {
                return r.err(format!("a definition of predefined type id {id}"));
            }
            if types.len() >= MAX_TYPES {
                return r.err("too many type definitions");
            }
            let wt = wire_type(&mut r)?;
            if r.pos != r.end {
                return r.err("trailing bytes after a type definition");
            }
            if types.insert(id, wt).is_some() {
                return r.err(format!("type id {id} defined twice"));
            }
            continue;
        }
        let d = Decoder { types: &types };
        d.check_defined(&r, id)?;
        let v = match (types.get(&id), each.as_mut()) {
            (Some(WireType::Struct { .. }), None) => d.value(&mut r, id, 0)?,
            (Some(WireType::Struct { .. }), Some(_)) => return r.err("a struct, not a list"),
            (t, each) => {
                if r.uint()? != 0 {
                    return r.err("a non-zero delta before a singleton value");
                }
                match (t, each) {
                    (_, None) => d.value(&mut r, id, 0)?,
                    (Some(WireType::Slice { elem }), Some(f)) => {
                        let n = r.count(1)?;
                        for _ in 0..n {
                            let at = r.pos;
                            let v = d.value(&mut r, *elem, 1)?;
                            f(v).map_err(|mut e| {
                                if e.offset == 0 {
                                    e.offset = at;
                                }
                                e
                            })?;
                        }
                        Value::List(Vec::new())
                    }
                    (_, Some(_)) => return r.err("not a list"),
                }
            }
        };
        if r.pos != r.end {
            return r.err("trailing bytes after the value");
        }
        if r.end != stream.len() {
            r.pos = r.end;
            return r.err("bytes after the value's message");
        }
        return Ok(v);
    }
}

/// Reads a struct encoded with field deltas into `f(field number, reader)`.
fn fields(r: &mut Reader<'_>, mut f: impl FnMut(&mut Reader<'_>, u64) -> Result<()>) -> Result<()> {
    let mut field: i64 = -1;
    loop {
        let at = r.pos;
        let delta = r.uint()?;
        if delta == 0 {
            return Ok(());
        }
        if delta > 1 << 20 {
            r.pos = at;
            return r.err(format!("a field delta of {delta}"));
        }
        field += delta as i64;
        f(r, field as u64)?;
    }
}

fn common_type(r: &mut Reader<'_>) -> Result<(String, i64)> {
    let mut name = String::new();
    let mut id = 0;
    fields(r, |r, n| {
        match n {
            0 => name = r.string()?,
            1 => id = r.int()?,
            _ => return r.err(format!("CommonType has no field {n}")),
        }
        Ok(())
    })?;
    Ok((name, id))
}

fn wire_type(r: &mut Reader<'_>) -> Result<WireType> {
    let mut out = None;
    fields(r, |r, n| {
        if out.is_some() {
            return r.err("a type definition of two kinds");
        }
        out = Some(match n {
            0 => {
                let (mut elem, mut len) = (0, 0);
                fields(r, |r, n| {
                    match n {
                        0 => {
                            common_type(r)?;
                        }
                        1 => elem = r.int()?,
                        2 => len = r.int()?,
                        _ => return r.err(format!("arrayType has no field {n}")),
                    }
                    Ok(())
                })?;
                if len < 0 {
                    return r.err("an array of negative length");
                }
                WireType::Array {
                    elem,
                    len: len as u64,
                }
            }
            1 => {
                let mut elem = 0;
                fields(r, |r, n| {
                    match n {
                        0 => {
                            common_type(r)?;
                        }
                        1 => elem = r.int()?,
                        _ => return r.err(format!("sliceType has no field {n}")),
                    }
                    Ok(())
                })?;
                WireType::Slice { elem }
            }
            2 => {
                let mut fs = Vec::new();
                fields(r, |r, n| {
                    match n {
                        0 => {
                            common_type(r)?;
                        }
                        1 => {
                            let count = r.count(1)?;
                            for _ in 0..count {
                                let (mut name, mut id) = (String::new(), 0);
                                fields(r, |r, n| {
                                    match n {
                                        0 => name = r.string()?,
                                        1 => id = r.int()?,
                                        _ => return r.err(format!("fieldType has no field {n}")),
                                    }
                                    Ok(())
                                })?;
                                fs.push((Arc::from(name), id));
                            }
                        }
                        _ => return r.err(format!("structType has no field {n}")),
                    }
                    Ok(())
                })?;
                WireType::Struct { fields: fs }
            }
            3 => {
                let (mut key, mut elem) = (0, 0);
                fields(r, |r, n| {
                    match n {
                        0 => {
                            common_type(r)?;
                        }
                        1 => key = r.int()?,
                        2 => elem = r.int()?,
                        _ => return r.err(format!("mapType has no field {n}")),
                    }
                    Ok(())
                })?;
                WireType::Map { key, elem }
            }
            4..=6 => {
                let mut name = String::new();
                fields(r, |r, n| {
                    match n {
                        0 => name = common_type(r)?.0,
                        _ => return r.err(format!("gobEncoderType has no field {n}")),
                    }
                    Ok(())
                })?;
                WireType::Encoder {
                    name: Arc::from(name),
                }
            }
            _ => return r.err(format!("wireType has no field {n}")),
        });
        Ok(())
    })?;
    match out {
        Some(t) => Ok(t),
        None => r.err("an empty type definition"),
    }
}

struct Decoder<'t> {
    types: &'t HashMap<i64, WireType>,
}

impl Decoder<'_> {
    /// Checks that `id` and everything it refers to is defined (or predefined)
    /// and decodable.
    fn check_defined(&self, r: &Reader<'_>, id: i64) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut todo = vec![id];
        while let Some(id) = todo.pop() {
            if !seen.insert(id) {
                continue;
            }
            match id {
                T_BOOL | T_INT | T_UINT | T_BYTES | T_STRING => {}
                T_FLOAT | T_COMPLEX | T_INTERFACE => {
                    return r.err(format!(
                        "a value of type id {id} (float, complex or interface), which no Go-clip type has"
                    ));
                }
                _ => match self.types.get(&id) {
                    None => return r.err(format!("type id {id} is not defined")),
                    Some(WireType::Array { elem, .. }) | Some(WireType::Slice { elem }) => {
                        todo.push(*elem)
                    }
                    Some(WireType::Map { key, elem }) => todo.extend([*key, *elem]),
                    Some(WireType::Struct { fields }) => todo.extend(fields.iter().map(|f| f.1)),
                    Some(WireType::Encoder { .. }) => {}
                },
            }
        }
        Ok(())
    }

    fn value(&self, r: &mut Reader<'_>, id: i64, depth: usize) -> Result<Value> {
        if depth > MAX_DEPTH {
            return r.err("values nested too deeply");
        }
        Ok(match id {
            T_BOOL => match r.uint()? {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                n => return r.err(format!("a bool of {n}")),
            },
            T_INT => Value::Int(r.int()?),
            T_UINT => Value::Uint(r.uint()?),
            T_BYTES | T_STRING => Value::Bytes(r.bytes()?),
            _ => match self.types.get(&id) {
                None => return r.err(format!("type id {id} is not defined")),
                Some(WireType::Slice { elem }) => {
                    let n = r.count(1)?;
                    let mut v = Vec::with_capacity(n.min(4096));
                    for _ in 0..n {
                        v.push(self.value(r, *elem, depth + 1)?);
                    }
                    Value::List(v)
                }
                Some(WireType::Array { elem, len }) => {
                    let n = r.count(1)?;
                    if n as u64 != *len {
                        return r.err(format!("an array of {n} elements for a [{len}] type"));
                    }
                    let mut v = Vec::with_capacity(n.min(4096));
                    for _ in 0..n {
                        v.push(self.value(r, *elem, depth + 1)?);
                    }
                    Value::List(v)
                }
                Some(WireType::Map { key, elem }) => {
                    let n = r.count(2)?;
                    let mut v = Vec::with_capacity(n.min(4096));
                    for _ in 0..n {
                        let k = self.value(r, *key, depth + 1)?;
                        let e = self.value(r, *elem, depth + 1)?;
                        v.push((k, e));
                    }
                    Value::Map(v)
                }
                Some(WireType::Encoder { name }) => Value::Encoded(name.clone(), r.bytes()?),
                Some(WireType::Struct { fields: fs }) => {
                    let mut out = Vec::new();
                    fields(r, |r, n| {
                        let Some((name, fid)) = fs.get(n as usize) else {
                            return r
                                .err(format!("field {n} of a struct with {} fields", fs.len()));
                        };
                        let v = self.value(r, *fid, depth + 1)?;
                        out.push((name.clone(), v));
                        Ok(())
                    })?;
                    Value::Struct(out)
                }
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `gob.NewEncoder(&b).Encode(struct{ A int; B string }{A: 7, B: "hi"})`,
    /// as Go 1.25 writes it.
    const SIMPLE: &[u8] = &[
        0x1a, 0x7f, 0x03, 0x01, 0x01, 0x01, 0x54, 0x01, 0xff, 0x80, 0x00, 0x01, 0x02, 0x01, 0x01,
        0x41, 0x01, 0x04, 0x00, 0x01, 0x01, 0x42, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x09, 0xff, 0x80,
        0x01, 0x0e, 0x01, 0x02, 0x68, 0x69, 0x00,
    ];

    /// `Encode([]*T{{A: -3}, {B: "x"}})`: a singleton slice whose element type is
    /// defined after it.
    const SLICE: &[u8] = &[
        0x0d, 0xff, 0x81, 0x02, 0x01, 0x02, 0xff, 0x82, 0x00, 0x01, 0xff, 0x80, 0x00, 0x00, 0x1a,
        0x7f, 0x03, 0x01, 0x01, 0x01, 0x54, 0x01, 0xff, 0x80, 0x00, 0x01, 0x02, 0x01, 0x01, 0x41,
        0x01, 0x04, 0x00, 0x01, 0x01, 0x42, 0x01, 0x0c, 0x00, 0x00, 0x00, 0x0b, 0xff, 0x82, 0x00,
        0x02, 0x01, 0x05, 0x00, 0x02, 0x01, 0x78, 0x00,
    ];

    #[test]
    fn go_values() {
        let v = decode(SIMPLE).unwrap();
        assert_eq!(v.field("A"), Some(&Value::Int(7)));
        assert_eq!(v.field("B"), Some(&Value::Bytes(b"hi".to_vec())));
        let Value::List(l) = decode(SLICE).unwrap() else {
            panic!("not a list")
        };
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].field("A"), Some(&Value::Int(-3)));
        assert_eq!(l[0].field("B"), None);
        assert_eq!(l[1].field("B"), Some(&Value::Bytes(b"x".to_vec())));
    }

    #[test]
    fn integers() {
        let mut r = Reader {
            buf: &[0x07, 0xfe, 0x01, 0x00, 0x03],
            pos: 0,
            end: 5,
        };
        assert_eq!(r.uint().unwrap(), 7);
        assert_eq!(r.uint().unwrap(), 256);
        assert_eq!(r.int().unwrap(), -2);
        let mut r = Reader {
            buf: &[0xf7],
            pos: 0,
            end: 1,
        };
        assert!(r.uint().is_err(), "a 9-byte integer");
    }

    #[test]
    fn truncations_and_flips_are_errors_not_panics() {
        for s in [SIMPLE, SLICE] {
            for n in 0..s.len() {
                assert!(decode(&s[..n]).is_err(), "prefix of {n} bytes");
            }
            for i in 0..s.len() {
                for bit in 0..8 {
                    let mut b = s.to_vec();
                    b[i] ^= 1 << bit;
                    let _ = decode(&b);
                }
            }
        }
        let mut b = SIMPLE.to_vec();
        b.push(0);
        assert!(decode(&b).is_err(), "trailing byte");
    }
}

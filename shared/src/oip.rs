//! Open Inference Protocol v2 (KServe v2) request, response and metadata bodies: typed tensors,
//! their JSON form, and the binary tensor data extension.
//!
//! A [`Tensor`] holds its data in its own datatype ([`TensorData`]): INT64 values are `i64`,
//! FP32 values `f32`, BYTES elements strings. JSON numbers are read straight into that type —
//! never through an intermediate `serde_json::Value` tree — and written back exactly: integers
//! as integers, FP32 as the shortest text that reads back as the same `f32`, FP16 as the
//! shortest text that reads back as the same half-precision value.
//!
//! [`decode_request`] reads a request body: the JSON object, and after it the binary section
//! when the `Inference-Header-Content-Length` header split the body (tensors whose parameters
//! carry `binary_data_size`, in input order, little-endian, BOOL one byte, BYTES a 4-byte
//! length before each element). Every tensor's shape is checked against the model's input
//! facts before its data is read, and no buffer ever grows past what the shape declares or
//! what the body can hold (a JSON element takes at least two bytes, a binary one exactly its
//! size). [`encode_response`] writes the answer, binary for the outputs that asked for it
//! (`binary_data` on a requested output, or `binary_data_output` on the request).

use std::fmt;

use half::f16;
use serde::de::{self, DeserializeSeed, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// An OIP v2 datatype Outpost serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Datatype {
    Bool,
    Uint8,
    Uint16,
    Uint32,
    Uint64,
    Int8,
    Int16,
    Int32,
    Int64,
    Fp16,
    Fp32,
    Fp64,
    Bytes,
}

impl Datatype {
    /// Every datatype, in the order the protocol lists them.
    pub const ALL: [Datatype; 13] = [
        Datatype::Bool,
        Datatype::Uint8,
        Datatype::Uint16,
        Datatype::Uint32,
        Datatype::Uint64,
        Datatype::Int8,
        Datatype::Int16,
        Datatype::Int32,
        Datatype::Int64,
        Datatype::Fp16,
        Datatype::Fp32,
        Datatype::Fp64,
        Datatype::Bytes,
    ];

    /// The protocol's name: `"INT64"`, `"FP32"`, `"BYTES"`…
    pub fn as_str(self) -> &'static str {
        match self {
            Datatype::Bool => "BOOL",
            Datatype::Uint8 => "UINT8",
            Datatype::Uint16 => "UINT16",
            Datatype::Uint32 => "UINT32",
            Datatype::Uint64 => "UINT64",
            Datatype::Int8 => "INT8",
            Datatype::Int16 => "INT16",
            Datatype::Int32 => "INT32",
            Datatype::Int64 => "INT64",
            Datatype::Fp16 => "FP16",
            Datatype::Fp32 => "FP32",
            Datatype::Fp64 => "FP64",
            Datatype::Bytes => "BYTES",
        }
    }

    /// The datatype named `name`, if Outpost serves it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|d| d.as_str() == name)
    }

    /// Bytes per element in the binary extension; `None` for BYTES (length-prefixed).
    pub fn element_size(self) -> Option<usize> {
        match self {
            Datatype::Bool | Datatype::Uint8 | Datatype::Int8 => Some(1),
            Datatype::Uint16 | Datatype::Int16 | Datatype::Fp16 => Some(2),
            Datatype::Uint32 | Datatype::Int32 | Datatype::Fp32 => Some(4),
            Datatype::Uint64 | Datatype::Int64 | Datatype::Fp64 => Some(8),
            Datatype::Bytes => None,
        }
    }

    /// Whether the elements are numbers (everything but BOOL and BYTES).
    pub fn is_numeric(self) -> bool {
        !matches!(self, Datatype::Bool | Datatype::Bytes)
    }

    fn names() -> String {
        Self::ALL.map(Self::as_str).join(", ")
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A tensor's elements, flattened in row-major order, in the tensor's datatype.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorData {
    Bool(Vec<bool>),
    Uint8(Vec<u8>),
    Uint16(Vec<u16>),
    Uint32(Vec<u32>),
    Uint64(Vec<u64>),
    Int8(Vec<i8>),
    Int16(Vec<i16>),
    Int32(Vec<i32>),
    Int64(Vec<i64>),
    Fp16(Vec<f16>),
    Fp32(Vec<f32>),
    Fp64(Vec<f64>),
    Bytes(Vec<String>),
}

/// Applies `$body` to the vector inside a [`TensorData`], whatever its element type.
macro_rules! each_vec {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes($v) => $body,
        }
    };
}

/// Applies `$body` to the vector of a numeric [`TensorData`] with `$v` (element type `T:
/// Number`), or evaluates `$bytes` for BYTES.
macro_rules! each_number {
    ($data:expr, $v:ident => $body:expr, bytes => $bytes:expr) => {
        match $data {
            TensorData::Bool($v) => $body,
            TensorData::Uint8($v) => $body,
            TensorData::Uint16($v) => $body,
            TensorData::Uint32($v) => $body,
            TensorData::Uint64($v) => $body,
            TensorData::Int8($v) => $body,
            TensorData::Int16($v) => $body,
            TensorData::Int32($v) => $body,
            TensorData::Int64($v) => $body,
            TensorData::Fp16($v) => $body,
            TensorData::Fp32($v) => $body,
            TensorData::Fp64($v) => $body,
            TensorData::Bytes(_) => $bytes,
        }
    };
}

/// An element type as statistics and comparisons read it.
pub trait Number: Copy {
    fn to_f64(self) -> f64;
    fn to_f32(self) -> f32;
}

macro_rules! number_via_as {
    ($($t:ty),*) => {$(
        impl Number for $t {
            fn to_f64(self) -> f64 { self as f64 }
            fn to_f32(self) -> f32 { self as f32 }
        }
    )*};
}
number_via_as!(u8, u16, u32, u64, i8, i16, i32, i64, f32, f64);

impl Number for bool {
    fn to_f64(self) -> f64 {
        f64::from(u8::from(self))
    }
    fn to_f32(self) -> f32 {
        f32::from(u8::from(self))
    }
}

impl Number for f16 {
    fn to_f64(self) -> f64 {
        f16::to_f64(self)
    }
    fn to_f32(self) -> f32 {
        f16::to_f32(self)
    }
}

impl TensorData {
    pub fn datatype(&self) -> Datatype {
        match self {
            TensorData::Bool(_) => Datatype::Bool,
            TensorData::Uint8(_) => Datatype::Uint8,
            TensorData::Uint16(_) => Datatype::Uint16,
            TensorData::Uint32(_) => Datatype::Uint32,
            TensorData::Uint64(_) => Datatype::Uint64,
            TensorData::Int8(_) => Datatype::Int8,
            TensorData::Int16(_) => Datatype::Int16,
            TensorData::Int32(_) => Datatype::Int32,
            TensorData::Int64(_) => Datatype::Int64,
            TensorData::Fp16(_) => Datatype::Fp16,
            TensorData::Fp32(_) => Datatype::Fp32,
            TensorData::Fp64(_) => Datatype::Fp64,
            TensorData::Bytes(_) => Datatype::Bytes,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        each_vec!(self, v => v.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `index` as a number (BOOL as 0 or 1); `None` for BYTES or past the end.
    pub fn value_f64(&self, index: usize) -> Option<f64> {
        each_number!(self, v => v.get(index).map(|x| x.to_f64()), bytes => None)
    }

    /// Every element as a number (BOOL as 0 or 1); empty for BYTES.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        each_number!(self, v => v.iter().map(|x| x.to_f64()).collect(), bytes => Vec::new())
    }

    /// Every element as `f32`, the form statistics windows read (BOOL as 0 or 1, integers
    /// rounded to the nearest `f32`); empty for BYTES, which windows do not read as numbers.
    pub fn to_f32_vec(&self) -> Vec<f32> {
        each_number!(self, v => v.iter().map(|x| x.to_f32()).collect(), bytes => Vec::new())
    }

    /// The position of the first NaN or infinity of a floating-point tensor.
    pub fn first_non_finite(&self) -> Option<usize> {
        match self {
            TensorData::Fp16(v) => v.iter().position(|x| !x.is_finite()),
            // Branch-free within chunks so the common all-finite case vectorises; the position
            // is looked up only on failure.
            TensorData::Fp32(v) => {
                let finite = v.chunks(64).all(|c| c.iter().fold(true, |ok, x| ok & x.is_finite()));
                if finite { None } else { v.iter().position(|x| !x.is_finite()) }
            }
            TensorData::Fp64(v) => v.iter().position(|x| !x.is_finite()),
            _ => None,
        }
    }

    /// `values` converted to `datatype`: integers must be whole and in range, BOOL 0 or 1,
    /// floats within the type's range. BYTES cannot be made from numbers. The index and value
    /// of the first element that does not fit is the error.
    pub fn from_f64(datatype: Datatype, values: &[f64]) -> Result<TensorData, (usize, f64)> {
        fn convert<T: Element>(values: &[f64]) -> Result<Vec<T>, (usize, f64)> {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| T::from_json(JsonScalar::Float(*v)).ok_or((i, *v)))
                .collect()
        }
        Ok(match datatype {
            Datatype::Bool => TensorData::Bool(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| match *v {
                        0.0 => Ok(false),
                        1.0 => Ok(true),
                        other => Err((i, other)),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Datatype::Uint8 => TensorData::Uint8(convert(values)?),
            Datatype::Uint16 => TensorData::Uint16(convert(values)?),
            Datatype::Uint32 => TensorData::Uint32(convert(values)?),
            Datatype::Uint64 => TensorData::Uint64(convert(values)?),
            Datatype::Int8 => TensorData::Int8(convert(values)?),
            Datatype::Int16 => TensorData::Int16(convert(values)?),
            Datatype::Int32 => TensorData::Int32(convert(values)?),
            Datatype::Int64 => TensorData::Int64(convert(values)?),
            Datatype::Fp16 => TensorData::Fp16(convert(values)?),
            Datatype::Fp32 => TensorData::Fp32(convert(values)?),
            Datatype::Fp64 => TensorData::Fp64(values.to_vec()),
            Datatype::Bytes => {
                return Err(values.first().map_or((0, f64::NAN), |v| (0, *v)));
            }
        })
    }

    /// Size of the binary form in bytes.
    pub fn binary_size(&self) -> usize {
        match self {
            TensorData::Bytes(v) => v.iter().map(|s| 4 + s.len()).sum(),
            other => other.len() * other.datatype().element_size().unwrap_or(0),
        }
    }

    /// Appends the binary form (little-endian, BOOL one byte, BYTES length-prefixed).
    pub fn write_binary(&self, out: &mut Vec<u8>) {
        macro_rules! le {
            ($v:expr) => {
                for x in $v {
                    out.extend_from_slice(&x.to_le_bytes());
                }
            };
        }
        match self {
            TensorData::Bool(v) => out.extend(v.iter().map(|b| u8::from(*b))),
            TensorData::Uint8(v) => out.extend_from_slice(v),
            TensorData::Uint16(v) => le!(v),
            TensorData::Uint32(v) => le!(v),
            TensorData::Uint64(v) => le!(v),
            TensorData::Int8(v) => le!(v),
            TensorData::Int16(v) => le!(v),
            TensorData::Int32(v) => le!(v),
            TensorData::Int64(v) => le!(v),
            TensorData::Fp16(v) => le!(v),
            TensorData::Fp32(v) => le!(v),
            TensorData::Fp64(v) => le!(v),
            TensorData::Bytes(v) => {
                for s in v {
                    // Elements come from JSON strings or runtime strings, both far below 4 GiB.
                    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
                    out.extend_from_slice(&len.to_le_bytes());
                    out.extend_from_slice(s.as_bytes());
                }
            }
        }
    }

    /// Reads `expected` elements of `datatype` from their binary form, which must be exactly
    /// `bytes`.
    pub fn read_binary(
        datatype: Datatype,
        bytes: &[u8],
        expected: usize,
    ) -> Result<TensorData, BinaryError> {
        macro_rules! fixed {
            ($variant:ident, $t:ty, $n:expr) => {{
                if bytes.len() != expected.saturating_mul($n) {
                    return Err(BinaryError::Size {
                        size: bytes.len(),
                        expected,
                        element_size: $n,
                    });
                }
                TensorData::$variant(
                    bytes
                        .chunks_exact($n)
                        .map(|c| {
                            let mut a = [0u8; $n];
                            a.copy_from_slice(c);
                            <$t>::from_le_bytes(a)
                        })
                        .collect(),
                )
            }};
        }
        Ok(match datatype {
            Datatype::Bool => {
                if bytes.len() != expected {
                    return Err(BinaryError::Size { size: bytes.len(), expected, element_size: 1 });
                }
                if let Some(index) = bytes.iter().position(|b| *b > 1) {
                    return Err(BinaryError::Bool { index, byte: bytes[index] });
                }
                TensorData::Bool(bytes.iter().map(|b| *b == 1).collect())
            }
            Datatype::Uint8 => {
                if bytes.len() != expected {
                    return Err(BinaryError::Size { size: bytes.len(), expected, element_size: 1 });
                }
                TensorData::Uint8(bytes.to_vec())
            }
            Datatype::Int8 => fixed!(Int8, i8, 1),
            Datatype::Uint16 => fixed!(Uint16, u16, 2),
            Datatype::Int16 => fixed!(Int16, i16, 2),
            Datatype::Fp16 => fixed!(Fp16, f16, 2),
            Datatype::Uint32 => fixed!(Uint32, u32, 4),
            Datatype::Int32 => fixed!(Int32, i32, 4),
            Datatype::Fp32 => fixed!(Fp32, f32, 4),
            Datatype::Uint64 => fixed!(Uint64, u64, 8),
            Datatype::Int64 => fixed!(Int64, i64, 8),
            Datatype::Fp64 => fixed!(Fp64, f64, 8),
            Datatype::Bytes => {
                // Every element takes at least its 4-byte length.
                let mut out = Vec::with_capacity(expected.min(bytes.len() / 4));
                let mut rest = bytes;
                while !rest.is_empty() {
                    let index = out.len();
                    if index == expected {
                        return Err(BinaryError::TrailingBytes { extra: rest.len(), expected });
                    }
                    let Some((len, tail)) = rest.split_first_chunk::<4>() else {
                        return Err(BinaryError::Truncated { index });
                    };
                    let len = u32::from_le_bytes(*len) as usize;
                    if tail.len() < len {
                        return Err(BinaryError::Truncated { index });
                    }
                    let (element, tail) = tail.split_at(len);
                    let text =
                        std::str::from_utf8(element).map_err(|_| BinaryError::NotUtf8 { index })?;
                    out.push(text.to_string());
                    rest = tail;
                }
                if out.len() != expected {
                    return Err(BinaryError::Count { actual: out.len(), expected });
                }
                TensorData::Bytes(out)
            }
        })
    }
}

macro_rules! from_vec {
    ($($t:ty => $variant:ident),*) => {$(
        impl From<Vec<$t>> for TensorData {
            fn from(v: Vec<$t>) -> Self { TensorData::$variant(v) }
        }
    )*};
}
from_vec!(bool => Bool, u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8,
    i16 => Int16, i32 => Int32, i64 => Int64, f16 => Fp16, f32 => Fp32, f64 => Fp64,
    String => Bytes);

/// Why a tensor's binary data cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BinaryError {
    #[error("binary_data_size {size} is not {expected} elements of {element_size} bytes")]
    Size { size: usize, expected: usize, element_size: usize },
    #[error("BOOL element {index} is the byte {byte}, not 0 or 1")]
    Bool { index: usize, byte: u8 },
    #[error("BYTES element {index} is cut short by the end of its binary data")]
    Truncated { index: usize },
    #[error("BYTES element {index} is not UTF-8 text")]
    NotUtf8 { index: usize },
    #[error("binary data holds {actual} BYTES elements, the shape says {expected}")]
    Count { actual: usize, expected: usize },
    #[error(
        "binary data goes on for {extra} bytes after the {expected} BYTES elements of the shape"
    )]
    TrailingBytes { extra: usize, expected: usize },
}

/// One tensor in a request or response.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<u64>,
    pub data: TensorData,
    pub parameters: Option<Map<String, Value>>,
}

/// Why a tensor is not acceptable as it stands.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TensorError {
    #[error(
        "tensor `{name}`: unsupported datatype {datatype:?} (supported: {})",
        Datatype::names()
    )]
    Datatype { name: String, datatype: String },
    #[error("tensor `{name}`: shape {shape:?} holds {expected} elements but data has {actual}")]
    ElementCount { name: String, shape: Vec<u64>, expected: u64, actual: usize },
}

impl Tensor {
    pub fn new(name: &str, shape: Vec<u64>, data: impl Into<TensorData>) -> Self {
        Self { name: name.into(), shape, data: data.into(), parameters: None }
    }

    pub fn datatype(&self) -> Datatype {
        self.data.datatype()
    }

    /// Elements the shape holds; `None` when the product overflows.
    pub fn declared_elements(&self) -> Option<u64> {
        elements_of(&self.shape)
    }

    /// Checks that the data length matches the shape.
    pub fn validate(&self) -> Result<(), TensorError> {
        match self.declared_elements() {
            Some(expected) if expected == self.data.len() as u64 => Ok(()),
            expected => Err(TensorError::ElementCount {
                name: self.name.clone(),
                shape: self.shape.clone(),
                expected: expected.unwrap_or(u64::MAX),
                actual: self.data.len(),
            }),
        }
    }
}

fn elements_of(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, d| acc.checked_mul(*d))
}

/// The JSON form of a tensor's data, with each datatype's exact number format.
struct JsonData<'a>(&'a TensorData);

impl Serialize for JsonData<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            // serde_json writes an `f32` as the shortest text that reads back as that `f32`.
            TensorData::Fp16(v) => serializer.collect_seq(v.iter().map(|x| shortest_f16(*x))),
            TensorData::Bool(v) => serializer.collect_seq(v),
            TensorData::Uint8(v) => serializer.collect_seq(v),
            TensorData::Uint16(v) => serializer.collect_seq(v),
            TensorData::Uint32(v) => serializer.collect_seq(v),
            TensorData::Uint64(v) => serializer.collect_seq(v),
            TensorData::Int8(v) => serializer.collect_seq(v),
            TensorData::Int16(v) => serializer.collect_seq(v),
            TensorData::Int32(v) => serializer.collect_seq(v),
            TensorData::Int64(v) => serializer.collect_seq(v),
            TensorData::Fp32(v) => serializer.collect_seq(v),
            TensorData::Fp64(v) => serializer.collect_seq(v),
            TensorData::Bytes(v) => serializer.collect_seq(v),
        }
    }
}

/// The `f64` whose shortest text is the shortest decimal that reads back as `value` in half
/// precision (so `0.1` prints as `0.1`, not as the `f32` text of the nearest half, 0.099975586).
fn shortest_f16(value: f16) -> f64 {
    let wide = value.to_f32();
    if !wide.is_finite() {
        return f64::from(wide);
    }
    for digits in 1..=5 {
        let text = format!("{:.*e}", digits - 1, wide);
        if let Ok(parsed) = text.parse::<f64>()
            && f16::from_f64(parsed) == value
        {
            return parsed;
        }
    }
    f64::from(wide)
}

/// A tensor as JSON; `binary_size` replaces the data by the `binary_data_size` parameter.
struct JsonTensor<'a> {
    tensor: &'a Tensor,
    binary_size: Option<usize>,
}

impl Serialize for JsonTensor<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let tensor = self.tensor;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("name", &tensor.name)?;
        map.serialize_entry("datatype", tensor.datatype().as_str())?;
        map.serialize_entry("shape", &tensor.shape)?;
        match self.binary_size {
            Some(size) => {
                let mut parameters = tensor.parameters.clone().unwrap_or_default();
                parameters.insert("binary_data_size".into(), Value::from(size));
                map.serialize_entry("parameters", &parameters)?;
            }
            None => {
                if let Some(parameters) = &tensor.parameters {
                    map.serialize_entry("parameters", parameters)?;
                }
                map.serialize_entry("data", &JsonData(&tensor.data))?;
            }
        }
        map.end()
    }
}

impl Serialize for Tensor {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        JsonTensor { tensor: self, binary_size: None }.serialize(serializer)
    }
}

/// A tensor as a JSON object says it, the data kept as text until the datatype and shape are
/// known (members may come in any order).
#[derive(Deserialize)]
struct TensorHeader<'a> {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

#[derive(Deserialize)]
struct OwnedTensorHeader {
    name: String,
    datatype: String,
    shape: Vec<u64>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
}

impl<'de> Deserialize<'de> for Tensor {
    /// Reads a self-contained JSON tensor (golden sets, baseline files); binary data has no
    /// place here.
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let header = OwnedTensorHeader::deserialize(deserializer)?;
        let datatype = Datatype::parse(&header.datatype).ok_or_else(|| {
            de::Error::custom(format!(
                "tensor `{}`: unsupported datatype {:?} (supported: {})",
                header.name,
                header.datatype,
                Datatype::names()
            ))
        })?;
        let raw = header
            .data
            .as_deref()
            .ok_or_else(|| de::Error::custom(format!("tensor `{}` has no `data`", header.name)))?;
        let expected = elements_of(&header.shape).unwrap_or(u64::MAX);
        let data = parse_json_data(raw.get(), datatype, expected)
            .map_err(|e| de::Error::custom(format!("tensor `{}`: {e}", header.name)))?;
        let tensor =
            Tensor { name: header.name, shape: header.shape, data, parameters: header.parameters };
        tensor.validate().map_err(de::Error::custom)?;
        Ok(tensor)
    }
}

/// Why a tensor's JSON data is not what its datatype and shape say.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    #[error("element {index} is {found}, not {wanted}")]
    WrongKind { index: usize, found: String, wanted: &'static str },
    #[error("element {index} ({value}) is not a valid {datatype}")]
    NotRepresentable { index: usize, value: String, datatype: Datatype },
    #[error("the shape holds {expected} elements but data has more")]
    TooMany { expected: u64 },
    #[error("malformed JSON in data: {0}")]
    Json(String),
}

/// A JSON scalar as it appears in tensor data.
#[derive(Debug, Clone, Copy)]
enum JsonScalar<'a> {
    Unsigned(u64),
    Signed(i64),
    Float(f64),
    Bool(bool),
    Text(&'a str),
}

impl JsonScalar<'_> {
    fn describe(&self) -> String {
        match self {
            JsonScalar::Unsigned(v) => format!("the number {v}"),
            JsonScalar::Signed(v) => format!("the number {v}"),
            JsonScalar::Float(v) => format!("the number {}", float_text(*v)),
            JsonScalar::Bool(b) => format!("the boolean {b}"),
            JsonScalar::Text(text) => {
                let shown: String = text.chars().take(40).collect();
                format!("the string {shown:?}")
            }
        }
    }

    fn number_text(&self) -> Option<String> {
        match self {
            JsonScalar::Unsigned(v) => Some(v.to_string()),
            JsonScalar::Signed(v) => Some(v.to_string()),
            JsonScalar::Float(v) => Some(float_text(*v)),
            _ => None,
        }
    }
}

/// A JSON number's value as JSON prints it (`1e+39`, not forty digits).
fn float_text(v: f64) -> String {
    serde_json::Number::from_f64(v).map_or_else(|| v.to_string(), |n| n.to_string())
}

/// An element type JSON data is read into.
trait Element: Sized {
    const DATATYPE: Datatype;
    /// What a JSON element of this type is, for errors.
    const WANTED: &'static str;
    fn from_json(value: JsonScalar<'_>) -> Option<Self>;
}

/// A whole number in an `f64`, exactly, when there is one.
fn whole(v: f64) -> Option<i128> {
    if v.is_finite() && v.fract() == 0.0 && v.abs() < 1.7e38 { Some(v as i128) } else { None }
}

macro_rules! integer_element {
    ($($t:ty => $dt:ident),*) => {$(
        impl Element for $t {
            const DATATYPE: Datatype = Datatype::$dt;
            const WANTED: &'static str = "an integer";
            fn from_json(value: JsonScalar<'_>) -> Option<Self> {
                match value {
                    JsonScalar::Unsigned(v) => <$t>::try_from(v).ok(),
                    JsonScalar::Signed(v) => <$t>::try_from(v).ok(),
                    // `2.0` is the integer 2 (older writers print integers as floats).
                    JsonScalar::Float(v) => whole(v).and_then(|i| <$t>::try_from(i).ok()),
                    _ => None,
                }
            }
        }
    )*};
}
integer_element!(u8 => Uint8, u16 => Uint16, u32 => Uint32, u64 => Uint64, i8 => Int8,
    i16 => Int16, i32 => Int32, i64 => Int64);

impl Element for f32 {
    const DATATYPE: Datatype = Datatype::Fp32;
    const WANTED: &'static str =
        "a number (tensor data must be finite JSON numbers; NaN and infinities are refused)";
    fn from_json(value: JsonScalar<'_>) -> Option<Self> {
        let v = match value {
            JsonScalar::Unsigned(v) => v as f32,
            JsonScalar::Signed(v) => v as f32,
            JsonScalar::Float(v) => v as f32,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }
}

impl Element for f64 {
    const DATATYPE: Datatype = Datatype::Fp64;
    const WANTED: &'static str = <f32 as Element>::WANTED;
    fn from_json(value: JsonScalar<'_>) -> Option<Self> {
        let v = match value {
            JsonScalar::Unsigned(v) => v as f64,
            JsonScalar::Signed(v) => v as f64,
            JsonScalar::Float(v) => v,
            _ => return None,
        };
        v.is_finite().then_some(v)
    }
}

impl Element for f16 {
    const DATATYPE: Datatype = Datatype::Fp16;
    const WANTED: &'static str = <f32 as Element>::WANTED;
    fn from_json(value: JsonScalar<'_>) -> Option<Self> {
        let v = f16::from_f64(f64::from_json(value)?);
        v.is_finite().then_some(v)
    }
}

impl Element for bool {
    const DATATYPE: Datatype = Datatype::Bool;
    const WANTED: &'static str = "a boolean (BOOL data are true or false)";
    fn from_json(value: JsonScalar<'_>) -> Option<Self> {
        match value {
            JsonScalar::Bool(b) => Some(b),
            _ => None,
        }
    }
}

impl Element for String {
    const DATATYPE: Datatype = Datatype::Bytes;
    const WANTED: &'static str = "a string (BYTES data are JSON strings)";
    fn from_json(value: JsonScalar<'_>) -> Option<Self> {
        match value {
            JsonScalar::Text(text) => Some(text.to_string()),
            _ => None,
        }
    }
}

/// Collects the leaves of (possibly nested) JSON arrays into `out`, converting each as it is
/// read, and stops at the first element that does not fit or past `limit` elements.
struct Leaves<'s, T> {
    out: &'s mut Vec<T>,
    limit: u64,
    error: &'s mut Option<DataError>,
}

impl<T: Element> Leaves<'_, T> {
    fn push<E: de::Error>(self, value: JsonScalar<'_>) -> Result<(), E> {
        let index = self.out.len();
        if index as u64 >= self.limit {
            *self.error = Some(DataError::TooMany { expected: self.limit });
            return Err(E::custom("too many elements"));
        }
        match T::from_json(value) {
            Some(v) => {
                self.out.push(v);
                Ok(())
            }
            None => {
                *self.error = Some(match value.number_text() {
                    Some(text)
                        if T::DATATYPE != Datatype::Bool && T::DATATYPE != Datatype::Bytes =>
                    {
                        DataError::NotRepresentable { index, value: text, datatype: T::DATATYPE }
                    }
                    _ => DataError::WrongKind { index, found: value.describe(), wanted: T::WANTED },
                });
                Err(E::custom("element refused"))
            }
        }
    }

    fn refuse<E: de::Error>(self, found: &str) -> Result<(), E> {
        *self.error = Some(DataError::WrongKind {
            index: self.out.len(),
            found: found.into(),
            wanted: T::WANTED,
        });
        Err(E::custom("element refused"))
    }
}

impl<'de, T: Element> DeserializeSeed<'de> for Leaves<'_, T> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: Element> Visitor<'de> for Leaves<'_, T> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("tensor data")
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Leaves { out, limit, error } = self;
        while seq.next_element_seed(Leaves { out: &mut *out, limit, error: &mut *error })?.is_some()
        {
        }
        Ok(())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<(), E> {
        self.push(JsonScalar::Unsigned(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<(), E> {
        self.push(JsonScalar::Signed(v))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<(), E> {
        self.push(JsonScalar::Float(v))
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<(), E> {
        self.push(JsonScalar::Bool(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.push(JsonScalar::Text(v))
    }
    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.refuse("null")
    }
    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.refuse("null")
    }
    fn visit_map<A: de::MapAccess<'de>>(self, _map: A) -> Result<(), A::Error> {
        self.refuse("an object")
    }
}

/// Reads JSON tensor data (flat or nested row-major arrays) of `datatype`. At most `expected`
/// elements are kept, and no more room is reserved than the text can hold (every element
/// takes at least two bytes), so a small body cannot claim a huge buffer by its shape.
pub fn parse_json_data(
    raw: &str,
    datatype: Datatype,
    expected: u64,
) -> Result<TensorData, DataError> {
    fn read<T: Element>(raw: &str, expected: u64) -> Result<Vec<T>, DataError> {
        let room = (raw.len() / 2 + 1) as u64;
        let mut out = Vec::with_capacity(usize::try_from(expected.min(room)).unwrap_or(0));
        let mut error = None;
        let mut deserializer = serde_json::Deserializer::from_str(raw);
        let result = Leaves { out: &mut out, limit: expected, error: &mut error }
            .deserialize(&mut deserializer)
            .and_then(|()| deserializer.end());
        match (result, error) {
            (_, Some(error)) => Err(error),
            (Err(error), None) => Err(DataError::Json(error.to_string())),
            (Ok(()), None) => Ok(out),
        }
    }
    Ok(match datatype {
        Datatype::Bool => TensorData::Bool(read(raw, expected)?),
        Datatype::Uint8 => TensorData::Uint8(read(raw, expected)?),
        Datatype::Uint16 => TensorData::Uint16(read(raw, expected)?),
        Datatype::Uint32 => TensorData::Uint32(read(raw, expected)?),
        Datatype::Uint64 => TensorData::Uint64(read(raw, expected)?),
        Datatype::Int8 => TensorData::Int8(read(raw, expected)?),
        Datatype::Int16 => TensorData::Int16(read(raw, expected)?),
        Datatype::Int32 => TensorData::Int32(read(raw, expected)?),
        Datatype::Int64 => TensorData::Int64(read(raw, expected)?),
        Datatype::Fp16 => TensorData::Fp16(read(raw, expected)?),
        Datatype::Fp32 => TensorData::Fp32(read(raw, expected)?),
        Datatype::Fp64 => TensorData::Fp64(read(raw, expected)?),
        Datatype::Bytes => TensorData::Bytes(read(raw, expected)?),
    })
}

/// Requested output, by name, with its parameters (`binary_data`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestedOutput {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
}

impl RequestedOutput {
    pub fn new(name: &str) -> Self {
        Self { name: name.into(), parameters: None }
    }
}

/// `POST /v2/models/{name}/infer` request body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameters: Option<Map<String, Value>>,
    pub inputs: Vec<Tensor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Vec<RequestedOutput>>,
}

impl InferenceRequest {
    /// A request for every output of `inputs`, with no id or parameters.
    pub fn new(inputs: Vec<Tensor>) -> Self {
        Self { id: None, parameters: None, inputs, outputs: None }
    }

    /// Whether output `name` is to be answered in the binary extension: its own `binary_data`
    /// parameter when it is requested with one, otherwise the request's `binary_data_output`.
    pub fn wants_binary(&self, name: &str) -> bool {
        let own = self
            .outputs
            .iter()
            .flatten()
            .find(|o| o.name == name)
            .and_then(|o| o.parameters.as_ref())
            .and_then(|p| p.get("binary_data"))
            .and_then(Value::as_bool);
        own.unwrap_or_else(|| {
            self.parameters
                .as_ref()
                .and_then(|p| p.get("binary_data_output"))
                .and_then(Value::as_bool)
                .unwrap_or(false)
        })
    }
}

/// `POST /v2/models/{name}/infer` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferenceResponse {
    pub model_name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub outputs: Vec<Tensor>,
}

/// Input or output description in model metadata; `-1` marks a variable dimension.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorSpec {
    pub name: String,
    pub datatype: String,
    pub shape: Vec<i64>,
}

impl TensorSpec {
    /// Whether a tensor of `shape` fits: same rank, every fixed dimension equal, none zero.
    pub fn fits(&self, shape: &[u64]) -> bool {
        shape.len() == self.shape.len()
            && shape.iter().zip(&self.shape).all(|(a, e)| *e < 0 || i64::try_from(*a) == Ok(*e))
            && shape.iter().all(|d| *d > 0)
    }
}

/// `GET /v2/models/{name}` response body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    pub name: String,
    pub versions: Vec<String>,
    pub platform: String,
    pub inputs: Vec<TensorSpec>,
    pub outputs: Vec<TensorSpec>,
}

/// Error body of every 4xx/5xx answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
}

/// Error kinds of refused requests, as statistics windows count them. Every one is the
/// client's error; only `runtime` (in the model layer) is the model's.
pub mod kind {
    pub const MALFORMED_REQUEST: &str = "malformed_request";
    pub const BAD_INPUT_NAME: &str = "bad_input_name";
    pub const BAD_DATATYPE: &str = "bad_datatype";
    pub const BAD_SHAPE: &str = "bad_shape";
    pub const BAD_VALUE: &str = "bad_value";
    pub const BAD_OUTPUT_NAME: &str = "bad_output_name";
    pub const UNSUPPORTED_PARAMETER: &str = "unsupported_parameter";
}

/// Why a request body is not an inference request the model can take.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DecodeError {
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("not an inference request: {0}")]
    NotARequest(String),
    #[error("Inference-Header-Content-Length is {length} but the body has only {body} bytes")]
    HeaderLength { length: usize, body: usize },
    #[error("unknown input `{name}` (the model's inputs are: {expected})")]
    UnknownInput { name: String, expected: String },
    #[error("input `{0}` is given twice")]
    DuplicateInput(String),
    #[error("input `{name}`: unsupported datatype {datatype:?} (supported: {})", Datatype::names())]
    UnsupportedDatatype { name: String, datatype: String },
    #[error("input `{name}`: datatype {actual}, the model expects {expected}")]
    Datatype { name: String, expected: String, actual: String },
    #[error("input `{name}`: shape {actual:?} does not fit the model's {expected:?}")]
    Shape { name: String, expected: Vec<i64>, actual: Vec<u64> },
    #[error("input `{name}`: shape {shape:?} holds {expected} elements but data has {actual}")]
    ElementCount { name: String, shape: Vec<u64>, expected: u64, actual: String },
    #[error("input `{name}`: {source}")]
    Data { name: String, source: DataError },
    #[error("input `{name}`: {source}")]
    Binary { name: String, source: BinaryError },
    #[error("input `{name}`: {problem}")]
    BinaryLayout { name: String, problem: String },
    #[error(
        "the binary section has {extra} bytes after the inputs' binary_data_size add up \
         (Inference-Header-Content-Length splits the body into JSON and binary data)"
    )]
    TrailingBinary { extra: usize },
    #[error("{0} is not supported by this server")]
    Unsupported(String),
}

impl DecodeError {
    /// The kind counted in statistics windows; every decode error is the client's.
    pub fn kind(&self) -> &'static str {
        match self {
            DecodeError::MalformedJson(_)
            | DecodeError::NotARequest(_)
            | DecodeError::HeaderLength { .. }
            | DecodeError::BinaryLayout { .. }
            | DecodeError::TrailingBinary { .. } => kind::MALFORMED_REQUEST,
            DecodeError::UnknownInput { .. } | DecodeError::DuplicateInput(_) => {
                kind::BAD_INPUT_NAME
            }
            DecodeError::UnsupportedDatatype { .. } | DecodeError::Datatype { .. } => {
                kind::BAD_DATATYPE
            }
            DecodeError::Shape { .. } | DecodeError::ElementCount { .. } => kind::BAD_SHAPE,
            DecodeError::Data { source: DataError::TooMany { .. }, .. } => kind::BAD_SHAPE,
            DecodeError::Data { source: DataError::Json(_), .. } => kind::MALFORMED_REQUEST,
            DecodeError::Data { .. } => kind::BAD_VALUE,
            DecodeError::Binary { source: BinaryError::Size { .. }, .. }
            | DecodeError::Binary { source: BinaryError::Count { .. }, .. }
            | DecodeError::Binary { source: BinaryError::TrailingBytes { .. }, .. } => {
                kind::BAD_SHAPE
            }
            DecodeError::Binary { .. } => kind::BAD_VALUE,
            DecodeError::Unsupported(_) => kind::UNSUPPORTED_PARAMETER,
        }
    }
}

#[derive(Deserialize)]
struct RequestHeader<'a> {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    parameters: Option<Map<String, Value>>,
    #[serde(borrow)]
    inputs: Vec<TensorHeader<'a>>,
    #[serde(default)]
    outputs: Option<Vec<RequestedOutput>>,
}

/// Reads an inference request body. `header_length` is the `Inference-Header-Content-Length`
/// header: the JSON object is the body's first `header_length` bytes and the binary tensor
/// data follows; without it the whole body is JSON. With the model's `inputs`, every input
/// tensor is checked against them (name, datatype, shape) before its data is read.
pub fn decode_request(
    body: &[u8],
    header_length: Option<usize>,
    inputs: Option<&[TensorSpec]>,
) -> Result<InferenceRequest, DecodeError> {
    let (json, mut binary) = match header_length {
        None => (body, &body[body.len()..]),
        Some(length) if length <= body.len() => body.split_at(length),
        Some(length) => return Err(DecodeError::HeaderLength { length, body: body.len() }),
    };
    let header: RequestHeader<'_> = serde_json::from_slice(json).map_err(|error| {
        if error.is_syntax() || error.is_eof() {
            DecodeError::MalformedJson(error.to_string())
        } else {
            DecodeError::NotARequest(error.to_string())
        }
    })?;
    if let Some(outputs) = &header.outputs {
        for output in outputs {
            if output.parameters.as_ref().is_some_and(|p| p.contains_key("classification")) {
                return Err(DecodeError::Unsupported(format!(
                    "the classification extension (requested for output `{}`)",
                    output.name
                )));
            }
        }
    }
    let mut tensors = Vec::with_capacity(header.inputs.len());
    for tensor in header.inputs {
        let name = tensor.name;
        if tensors.iter().any(|t: &Tensor| t.name == name) {
            return Err(DecodeError::DuplicateInput(name));
        }
        let datatype =
            Datatype::parse(&tensor.datatype).ok_or_else(|| DecodeError::UnsupportedDatatype {
                name: name.clone(),
                datatype: tensor.datatype.clone(),
            })?;
        if let Some(specs) = inputs {
            let Some(spec) = specs.iter().find(|s| s.name == name) else {
                return Err(DecodeError::UnknownInput {
                    name,
                    expected: specs.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", "),
                });
            };
            if spec.datatype != datatype.as_str() {
                return Err(DecodeError::Datatype {
                    name,
                    expected: spec.datatype.clone(),
                    actual: datatype.as_str().into(),
                });
            }
            if !spec.fits(&tensor.shape) {
                return Err(DecodeError::Shape {
                    name,
                    expected: spec.shape.clone(),
                    actual: tensor.shape,
                });
            }
        }
        let parameters = tensor.parameters;
        if parameters.as_ref().is_some_and(|p| p.contains_key("shared_memory_region")) {
            return Err(DecodeError::Unsupported(format!(
                "the shared memory extension (input `{name}`)"
            )));
        }
        let binary_size = parameters.as_ref().and_then(|p| p.get("binary_data_size"));
        let shape = tensor.shape;
        let Some(expected) = elements_of(&shape) else {
            return Err(element_count(&name, &shape, None, "fewer".into()));
        };
        let data = match (tensor.data, binary_size) {
            (Some(_), Some(_)) => {
                return Err(DecodeError::BinaryLayout {
                    name,
                    problem: "has both `data` and the `binary_data_size` parameter".into(),
                });
            }
            (None, None) => {
                return Err(DecodeError::NotARequest(format!(
                    "input `{name}` has no `data` (nor a `binary_data_size` parameter)"
                )));
            }
            (Some(raw), None) => parse_json_data(raw.get(), datatype, expected)
                .map_err(|source| DecodeError::Data { name: name.clone(), source })?,
            (None, Some(size)) => {
                let Some(size) = size.as_u64().and_then(|s| usize::try_from(s).ok()) else {
                    return Err(DecodeError::BinaryLayout {
                        name,
                        problem: format!("binary_data_size {size} is not a byte count"),
                    });
                };
                if header_length.is_none() {
                    return Err(DecodeError::BinaryLayout {
                        name,
                        problem: "has binary_data_size but the request has no \
                                  Inference-Header-Content-Length header"
                            .into(),
                    });
                }
                if size > binary.len() {
                    return Err(DecodeError::BinaryLayout {
                        name,
                        problem: format!(
                            "binary_data_size {size} goes past the end of the body ({} binary \
                             bytes left)",
                            binary.len()
                        ),
                    });
                }
                let (own, rest) = binary.split_at(size);
                binary = rest;
                let Ok(count) = usize::try_from(expected) else {
                    return Err(element_count(&name, &shape, Some(expected), "fewer".into()));
                };
                TensorData::read_binary(datatype, own, count)
                    .map_err(|source| DecodeError::Binary { name: name.clone(), source })?
            }
        };
        if data.len() as u64 != expected {
            return Err(element_count(&name, &shape, Some(expected), data.len().to_string()));
        }
        tensors.push(Tensor { name, shape, data, parameters });
    }
    if !binary.is_empty() {
        return Err(DecodeError::TrailingBinary { extra: binary.len() });
    }
    Ok(InferenceRequest {
        id: header.id,
        parameters: header.parameters,
        inputs: tensors,
        outputs: header.outputs,
    })
}

fn element_count(name: &str, shape: &[u64], expected: Option<u64>, actual: String) -> DecodeError {
    DecodeError::ElementCount {
        name: name.into(),
        shape: shape.to_vec(),
        expected: expected.unwrap_or(u64::MAX),
        actual,
    }
}

/// An encoded response body; `json_length` is set (the `Inference-Header-Content-Length`
/// header) when binary tensor data follows the JSON.
#[derive(Debug, Clone, PartialEq)]
pub struct EncodedResponse {
    pub body: Vec<u8>,
    pub json_length: Option<usize>,
}

struct ResponseJson<'a> {
    response: &'a InferenceResponse,
    binary: &'a [bool],
}

impl Serialize for ResponseJson<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let response = self.response;
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry("model_name", &response.model_name)?;
        if let Some(version) = &response.model_version {
            map.serialize_entry("model_version", version)?;
        }
        if let Some(id) = &response.id {
            map.serialize_entry("id", id)?;
        }
        let outputs: Vec<JsonTensor<'_>> = response
            .outputs
            .iter()
            .zip(self.binary.iter().copied().chain(std::iter::repeat(false)))
            .map(|(tensor, binary)| JsonTensor {
                tensor,
                binary_size: binary.then(|| tensor.data.binary_size()),
            })
            .collect();
        map.serialize_entry("outputs", &outputs)?;
        map.end()
    }
}

/// Writes `response` to `request`: JSON, followed by the binary data of the outputs the
/// request asked to get in binary.
pub fn encode_response(
    request: &InferenceRequest,
    response: &InferenceResponse,
) -> Result<EncodedResponse, serde_json::Error> {
    let binary: Vec<bool> =
        response.outputs.iter().map(|o| request.wants_binary(&o.name)).collect();
    let binary_bytes: usize = response
        .outputs
        .iter()
        .zip(&binary)
        .filter(|(_, b)| **b)
        .map(|(o, _)| o.data.binary_size())
        .sum();
    let mut body = Vec::new();
    serde_json::to_writer(&mut body, &ResponseJson { response, binary: &binary })?;
    if !binary.contains(&true) {
        return Ok(EncodedResponse { body, json_length: None });
    }
    let json_length = body.len();
    body.reserve_exact(binary_bytes);
    for (output, _) in response.outputs.iter().zip(&binary).filter(|(_, b)| **b) {
        output.data.write_binary(&mut body);
    }
    Ok(EncodedResponse { body, json_length: Some(json_length) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(tensor: &Tensor) -> String {
        serde_json::to_string(tensor).expect("serialises")
    }

    #[test]
    fn element_count_is_checked() {
        assert!(Tensor::new("x", vec![1, 2], vec![1.0f32, 2.0]).validate().is_ok());
        let wrong = Tensor::new("x", vec![2, 2], vec![1.0f32]).validate();
        assert!(matches!(wrong, Err(TensorError::ElementCount { expected: 4, actual: 1, .. })));
        let overflow = Tensor::new("x", vec![u64::MAX, 3], Vec::<f32>::new()).validate();
        assert!(matches!(overflow, Err(TensorError::ElementCount { .. })));
    }

    #[test]
    fn every_datatype_prints_exactly() {
        let cases: Vec<(TensorData, &str)> = vec![
            (
                vec![2i64, -3, i64::MAX, i64::MIN].into(),
                "[2,-3,9223372036854775807,-9223372036854775808]",
            ),
            (vec![u64::MAX, 0].into(), "[18446744073709551615,0]"),
            (
                vec![0.1f32, 1.0 / 3.0, f32::MAX, f32::MIN_POSITIVE].into(),
                "[0.1,0.33333334,3.4028235e+38,1.1754944e-38]",
            ),
            (vec![0.1f64, 1.0 / 3.0].into(), "[0.1,0.3333333333333333]"),
            (
                vec![f16::from_f32(0.1), f16::from_f32(65504.0), f16::from_f32(-2.5)].into(),
                "[0.1,65500.0,-2.5]",
            ),
            (vec![true, false].into(), "[true,false]"),
            (vec![-128i8, 127].into(), "[-128,127]"),
            (vec![65535u16].into(), "[65535]"),
            (vec!["a\"b".to_string(), "é".to_string()].into(), r#"["a\"b","é"]"#),
        ];
        for (data, expected) in cases {
            let tensor = Tensor::new("t", vec![data.len() as u64], data.clone());
            let text = json(&tensor);
            assert!(text.contains(&format!("\"data\":{expected}")), "{text}");
            assert!(text.contains(&format!("\"datatype\":\"{}\"", data.datatype())), "{text}");
            // And it reads back to the very same values.
            let back: Tensor = serde_json::from_str(&text).expect("reads back");
            assert_eq!(back.data, data, "{text}");
        }
    }

    #[test]
    fn shortest_half_precision_text_reads_back() {
        for bits in (0u16..=0xffff).step_by(7) {
            let value = f16::from_bits(bits);
            if !value.is_finite() {
                continue;
            }
            let printed = shortest_f16(value);
            assert_eq!(f16::from_f64(printed.to_string().parse().expect("f64")), value);
        }
    }

    #[test]
    fn json_data_is_read_in_the_tensor_datatype() {
        let read = |raw: &str, dt: Datatype, n: u64| parse_json_data(raw, dt, n);
        assert_eq!(read("[[1,2],[3,4]]", Datatype::Int64, 4), Ok(vec![1i64, 2, 3, 4].into()));
        assert_eq!(read("[2.0]", Datatype::Int64, 1), Ok(vec![2i64].into()));
        assert_eq!(
            read("[9007199254740993]", Datatype::Int64, 1),
            Ok(vec![9_007_199_254_740_993i64].into())
        );
        assert_eq!(read("[18446744073709551615]", Datatype::Uint64, 1), Ok(vec![u64::MAX].into()));
        assert_eq!(read("[true,false]", Datatype::Bool, 2), Ok(vec![true, false].into()));
        assert_eq!(
            read(r#"["x","y"]"#, Datatype::Bytes, 2),
            Ok(vec!["x".to_string(), "y".to_string()].into())
        );
        assert_eq!(read("[0.1]", Datatype::Fp32, 1), Ok(vec![0.1f32].into()));
        for (raw, dt, expected) in [
            ("[256]", Datatype::Uint8, "element 0 (256) is not a valid UINT8"),
            ("[-1]", Datatype::Uint64, "element 0 (-1) is not a valid UINT64"),
            ("[1.5]", Datatype::Int32, "element 0 (1.5) is not a valid INT32"),
            ("[1e39]", Datatype::Fp32, "element 0 (1e+39) is not a valid FP32"),
            ("[1, \"NaN\"]", Datatype::Fp32, "element 1 is the string \"NaN\", not a number"),
            ("[[1],[null]]", Datatype::Fp64, "element 1 is null"),
            ("[1]", Datatype::Bool, "element 0 is the number 1, not a boolean"),
            ("[1]", Datatype::Bytes, "element 0 is the number 1, not a string"),
            ("[{}]", Datatype::Int8, "element 0 is an object"),
            ("[1,2,3]", Datatype::Int8, "the shape holds 2 elements but data has more"),
        ] {
            let error = read(raw, dt, 2).expect_err(raw).to_string();
            assert!(error.contains(expected), "{raw}: {error}");
        }
    }

    fn specs() -> Vec<TensorSpec> {
        vec![
            TensorSpec { name: "x".into(), datatype: "FP32".into(), shape: vec![-1, 2] },
            TensorSpec { name: "n".into(), datatype: "INT64".into(), shape: vec![-1] },
            TensorSpec { name: "s".into(), datatype: "BYTES".into(), shape: vec![-1] },
        ]
    }

    #[test]
    fn binary_inputs_follow_the_json_in_order() {
        let mut binary = Vec::new();
        TensorData::from(vec![1.5f32, -2.0]).write_binary(&mut binary);
        let x_size = binary.len();
        TensorData::from(vec!["hé".to_string(), String::new()]).write_binary(&mut binary);
        let s_size = binary.len() - x_size;
        let json = format!(
            r#"{{"id":"7","inputs":[
                {{"name":"x","shape":[1,2],"datatype":"FP32","parameters":{{"binary_data_size":{x_size}}}}},
                {{"name":"n","shape":[2],"datatype":"INT64","data":[1,-1]}},
                {{"name":"s","shape":[2],"datatype":"BYTES","parameters":{{"binary_data_size":{s_size}}}}}]}}"#
        );
        let mut body = json.clone().into_bytes();
        body.extend_from_slice(&binary);
        let specs = specs();
        let request = decode_request(&body, Some(json.len()), Some(&specs)).expect("decodes");
        assert_eq!(request.id.as_deref(), Some("7"));
        assert_eq!(request.inputs[0].data, vec![1.5f32, -2.0].into());
        assert_eq!(request.inputs[1].data, vec![1i64, -1].into());
        assert_eq!(request.inputs[2].data, vec!["hé".to_string(), String::new()].into());

        // One byte short, one byte too many, no header: each named.
        let short = decode_request(&body[..body.len() - 1], Some(json.len()), Some(&specs));
        assert!(matches!(short, Err(DecodeError::BinaryLayout { .. })), "{short:?}");
        let mut long = body.clone();
        long.push(0);
        let long = decode_request(&long, Some(json.len()), Some(&specs));
        assert!(matches!(long, Err(DecodeError::TrailingBinary { extra: 1 })), "{long:?}");
        let headerless = decode_request(json.as_bytes(), None, Some(&specs));
        assert!(matches!(headerless, Err(DecodeError::BinaryLayout { .. })), "{headerless:?}");
        let past = decode_request(&body, Some(body.len() + 1), Some(&specs));
        assert!(matches!(past, Err(DecodeError::HeaderLength { .. })), "{past:?}");
    }

    #[test]
    fn the_model_facts_are_checked_before_data_is_read() {
        let specs = specs();
        let decode = |body: &str| decode_request(body.as_bytes(), None, Some(&specs));
        for (body, kind, text) in [
            (
                r#"{"inputs":[{"name":"q","shape":[1],"datatype":"FP32","data":[1]}]}"#,
                "bad_input_name",
                "unknown input `q`",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"FP64","data":[1,2]}]}"#,
                "bad_datatype",
                "datatype FP64, the model expects FP32",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,2],"datatype":"STRING","data":[1,2]}]}"#,
                "bad_datatype",
                "unsupported datatype \"STRING\"",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[1,3],"datatype":"FP32","data":[1,2,3]}]}"#,
                "bad_shape",
                "does not fit the model's [-1, 2]",
            ),
            // A huge declared batch with tiny data: refused without reserving room for it.
            (
                r#"{"inputs":[{"name":"x","shape":[4611686018427387903,2],"datatype":"FP32","data":[1,2]}]}"#,
                "bad_shape",
                "holds 9223372036854775806 elements but data has 2",
            ),
            (
                r#"{"inputs":[{"name":"x","shape":[9223372036854775807,4],"datatype":"FP32","data":[1,2]}]}"#,
                "bad_shape",
                "does not fit",
            ),
            (
                r#"{"inputs":[{"name":"n","shape":[2],"datatype":"INT64","data":[1]}]}"#,
                "bad_shape",
                "holds 2 elements but data has 1",
            ),
            (
                r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT64","data":[1.5]}]}"#,
                "bad_value",
                "element 0 (1.5) is not a valid INT64",
            ),
            (
                r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT64"}]}"#,
                "malformed_request",
                "has no `data`",
            ),
            (
                r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT64","data":[1]},{"name":"n","shape":[1],"datatype":"INT64","data":[1]}]}"#,
                "bad_input_name",
                "given twice",
            ),
            (
                r#"{"inputs":[{"name":"n","shape":[1],"datatype":"INT64","data":[1]}],"outputs":[{"name":"y","parameters":{"classification":2}}]}"#,
                "unsupported_parameter",
                "classification",
            ),
            (r#"{"inputs": ["#, "malformed_request", "malformed JSON"),
            (r#"[]"#, "malformed_request", "not an inference request"),
            (r#"{"inputs":{}}"#, "malformed_request", "not an inference request"),
        ] {
            let error = decode(body).expect_err(body);
            assert_eq!(error.kind(), kind, "{body}: {error}");
            assert!(error.to_string().contains(text), "{body}: {error}");
        }
    }

    #[test]
    fn binary_outputs_are_answered_as_asked() {
        let response = InferenceResponse {
            model_name: "m".into(),
            model_version: None,
            id: Some("r".into()),
            outputs: vec![
                Tensor::new("label", vec![2], vec![3i64, 1]),
                Tensor::new("p", vec![2], vec![0.25f32, 0.75]),
            ],
        };
        let mut request = InferenceRequest::new(vec![]);
        let plain = encode_response(&request, &response).expect("encodes");
        assert_eq!(plain.json_length, None);
        assert_eq!(
            String::from_utf8(plain.body).expect("utf-8"),
            r#"{"model_name":"m","id":"r","outputs":[{"name":"label","datatype":"INT64","shape":[2],"data":[3,1]},{"name":"p","datatype":"FP32","shape":[2],"data":[0.25,0.75]}]}"#
        );
        request.parameters =
            Some(serde_json::from_str(r#"{"binary_data_output":true}"#).expect("map"));
        request.outputs = Some(vec![RequestedOutput {
            name: "p".into(),
            parameters: Some(serde_json::from_str(r#"{"binary_data":false}"#).expect("map")),
        }]);
        let mixed = encode_response(&request, &response).expect("encodes");
        let length = mixed.json_length.expect("binary follows");
        let json: Value = serde_json::from_slice(&mixed.body[..length]).expect("json");
        assert_eq!(json["outputs"][0]["parameters"]["binary_data_size"], 16);
        assert!(json["outputs"][0].get("data").is_none());
        assert_eq!(json["outputs"][1]["data"], serde_json::json!([0.25, 0.75]));
        let tail = &mixed.body[length..];
        assert_eq!(TensorData::read_binary(Datatype::Int64, tail, 2), Ok(vec![3i64, 1].into()));
    }
}

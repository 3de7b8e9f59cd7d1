//! Functions available in rule SQL: string, math, time, JSON and type
//! conversion, named as in EMQX's rule engine where it has one.

use serde_json::{Map, Value};

use super::value::{as_f64, as_text, num, EvalResult};

/// (name, min args, max args; `usize::MAX` for variadic).
const FUNCTIONS: &[(&str, usize, usize)] = &[
    // strings
    ("lower", 1, 1),
    ("upper", 1, 1),
    ("trim", 1, 1),
    ("ltrim", 1, 1),
    ("rtrim", 1, 1),
    ("concat", 1, usize::MAX),
    ("substr", 2, 3),
    ("strlen", 1, 1),
    ("length", 1, 1),
    ("replace", 3, 3),
    ("split", 2, 2),
    ("nth", 2, 2),
    ("contains", 2, 2),
    ("starts_with", 2, 2),
    ("ends_with", 2, 2),
    // math
    ("abs", 1, 1),
    ("ceil", 1, 1),
    ("floor", 1, 1),
    ("round", 1, 2),
    ("sqrt", 1, 1),
    ("power", 2, 2),
    ("mod", 2, 2),
    ("log", 1, 1),
    ("exp", 1, 1),
    ("min", 1, usize::MAX),
    ("max", 1, usize::MAX),
    // time
    ("now_timestamp", 0, 1),
    ("now_rfc3339", 0, 1),
    ("unix_ts_to_rfc3339", 1, 2),
    // JSON and types
    ("json_encode", 1, 1),
    ("json_decode", 1, 1),
    ("map_get", 2, 3),
    ("coalesce", 1, usize::MAX),
    ("is_null", 1, 1),
    ("is_not_null", 1, 1),
    ("str", 1, 1),
    ("int", 1, 1),
    ("float", 1, 1),
    ("bool", 1, 1),
    // MQTT
    ("topic_level", 1, 1),
];

pub fn check(name: &str, argc: usize) -> Result<(), String> {
    match FUNCTIONS.iter().find(|(n, _, _)| *n == name) {
        None => Err(format!("unknown function {name}()")),
        Some((_, lo, hi)) if argc < *lo || argc > *hi => Err(if lo == hi {
            format!("{name}() takes {lo} argument(s), got {argc}")
        } else {
            format!("{name}() takes {lo} to {hi} arguments, got {argc}")
        }),
        Some(_) => Ok(()),
    }
}

fn f(args: &[Value], i: usize, name: &str) -> Result<f64, String> {
    as_f64(&args[i]).ok_or_else(|| format!("{name}(): argument {} is not a number: {}", i + 1, args[i]))
}

fn math1(args: &[Value], name: &str, op: fn(f64) -> f64) -> EvalResult {
    if args[0].is_null() {
        return Ok(Value::Null);
    }
    Ok(num(op(f(args, 0, name)?)))
}

pub fn call(name: &str, args: Vec<Value>, ctx: &Map<String, Value>) -> EvalResult {
    check(name, args.len())?;
    let text = |i: usize| as_text(&args[i]);
    Ok(match name {
        "lower" => Value::String(text(0).to_lowercase()),
        "upper" => Value::String(text(0).to_uppercase()),
        "trim" => Value::String(text(0).trim().to_string()),
        "ltrim" => Value::String(text(0).trim_start().to_string()),
        "rtrim" => Value::String(text(0).trim_end().to_string()),
        "concat" => Value::String(args.iter().map(as_text).collect()),
        "substr" => {
            // 0-based start, as EMQX.
            let s: Vec<char> = text(0).chars().collect();
            let start = (f(&args, 1, name)?.max(0.0) as usize).min(s.len());
            let len = match args.get(2) {
                Some(_) => f(&args, 2, name)?.max(0.0) as usize,
                None => s.len(),
            };
            Value::String(s[start..(start + len).min(s.len())].iter().collect())
        }
        "strlen" | "length" => match &args[0] {
            Value::Array(a) => Value::from(a.len()),
            v => Value::from(as_text(v).chars().count()),
        },
        "replace" => Value::String(text(0).replace(&text(1), &text(2))),
        "split" => {
            let sep = text(1);
            if sep.is_empty() {
                return Err("split(): empty separator".into());
            }
            // Like EMQX, leading/trailing separators do not make empty parts.
            Value::Array(
                text(0)
                    .split(sep.as_str())
                    .filter(|p| !p.is_empty())
                    .map(|p| Value::String(p.to_string()))
                    .collect(),
            )
        }
        "nth" => {
            let n = f(&args, 0, name)? as usize;
            match &args[1] {
                Value::Array(a) => n.checked_sub(1).and_then(|i| a.get(i)).cloned().unwrap_or(Value::Null),
                _ => return Err("nth(): second argument is not an array".into()),
            }
        }
        "contains" => Value::Bool(text(0).contains(&text(1))),
        "starts_with" => Value::Bool(text(0).starts_with(&text(1))),
        "ends_with" => Value::Bool(text(0).ends_with(&text(1))),
        "abs" => math1(&args, name, f64::abs)?,
        "ceil" => math1(&args, name, f64::ceil)?,
        "floor" => math1(&args, name, f64::floor)?,
        "sqrt" => math1(&args, name, f64::sqrt)?,
        "log" => math1(&args, name, f64::ln)?,
        "exp" => math1(&args, name, f64::exp)?,
        "round" => {
            if args[0].is_null() {
                return Ok(Value::Null);
            }
            let digits = if args.len() > 1 { f(&args, 1, name)? as i32 } else { 0 };
            let scale = 10f64.powi(digits);
            num((f(&args, 0, name)? * scale).round() / scale)
        }
        "power" => num(f(&args, 0, name)?.powf(f(&args, 1, name)?)),
        "mod" => {
            let b = f(&args, 1, name)?;
            if b == 0.0 {
                return Err("mod(): division by zero".into());
            }
            num(f(&args, 0, name)? % b)
        }
        "min" | "max" => {
            let mut best: Option<f64> = None;
            for i in 0..args.len() {
                let v = f(&args, i, name)?;
                best = Some(match best {
                    None => v,
                    Some(b) if name == "min" => b.min(v),
                    Some(b) => b.max(v),
                });
            }
            num(best.unwrap_or(0.0))
        }
        "now_timestamp" => {
            let ms = sluice_meta::now_ms();
            match args.first().map(as_text).as_deref() {
                None | Some("millisecond") => Value::from(ms),
                Some("second") => Value::from(ms / 1000),
                Some(u) => return Err(format!("now_timestamp(): unknown unit {u}")),
            }
        }
        "now_rfc3339" => {
            let unit = args.first().map(as_text);
            Value::String(rfc3339(sluice_meta::now_ms(), unit.as_deref() == Some("millisecond")))
        }
        "unix_ts_to_rfc3339" => {
            let ts = f(&args, 0, name)? as i64;
            let unit = args.get(1).map(as_text);
            let ms = match unit.as_deref() {
                None | Some("second") => ts * 1000,
                Some("millisecond") => ts,
                Some(u) => return Err(format!("unix_ts_to_rfc3339(): unknown unit {u}")),
            };
            Value::String(rfc3339(ms, unit.as_deref() == Some("millisecond")))
        }
        "json_encode" => Value::String(args[0].to_string()),
        "json_decode" => serde_json::from_str(&text(0)).map_err(|e| format!("json_decode(): {e}"))?,
        "map_get" => {
            // map_get('a.b', map[, default]): a dotted path, or a key that contains dots.
            let key = text(0);
            let by_path = key.split('.').try_fold(&args[1], |v, k| v.as_object()?.get(k));
            let found = by_path.or_else(|| args[1].as_object()?.get(&key));
            found
                .cloned()
                .unwrap_or_else(|| args.get(2).cloned().unwrap_or(Value::Null))
        }
        "coalesce" => args.into_iter().find(|v| !v.is_null()).unwrap_or(Value::Null),
        "is_null" => Value::Bool(args[0].is_null()),
        "is_not_null" => Value::Bool(!args[0].is_null()),
        "str" => Value::String(text(0)),
        "int" => match as_f64(&args[0]) {
            Some(v) => Value::from(v.trunc() as i64),
            None => return Err(format!("int(): cannot convert {}", args[0])),
        },
        "float" => match as_f64(&args[0]) {
            Some(v) => serde_json::Number::from_f64(v)
                .map(Value::Number)
                .unwrap_or(Value::Null),
            None => return Err(format!("float(): cannot convert {}", args[0])),
        },
        "bool" => match &args[0] {
            Value::Bool(b) => Value::Bool(*b),
            Value::String(s) if s == "true" => Value::Bool(true),
            Value::String(s) if s == "false" => Value::Bool(false),
            Value::Number(n) => Value::Bool(n.as_f64() != Some(0.0)),
            other => return Err(format!("bool(): cannot convert {other}")),
        },
        "topic_level" => {
            // topic_level(n): the n-th level (1-based) of the message's topic.
            let n = f(&args, 0, name)? as usize;
            let topic = ctx.get("topic").map(as_text).unwrap_or_default();
            n.checked_sub(1)
                .and_then(|i| topic.split('/').nth(i))
                .map(|s| Value::String(s.to_string()))
                .unwrap_or(Value::Null)
        }
        other => return Err(format!("unknown function {other}()")),
    })
}

/// RFC 3339 UTC time for milliseconds since the epoch.
pub fn rfc3339(ms: i64, with_ms: bool) -> String {
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let (hh, mm, ss) = (rem / 3600, (rem / 60) % 60, rem % 60);
    if with_ms {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{milli:03}Z")
    } else {
        format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}Z")
    }
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian calendar).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_utc() {
        assert_eq!(rfc3339(0, false), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000_123, true), "2023-11-14T22:13:20.123Z");
        assert_eq!(rfc3339(951_782_400_000, false), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn string_functions() {
        let ctx = Map::new();
        let s = |v: &str| Value::String(v.into());
        assert_eq!(call("upper", vec![s("ab")], &ctx).unwrap(), s("AB"));
        assert_eq!(
            call("substr", vec![s("hello"), Value::from(1), Value::from(3)], &ctx).unwrap(),
            s("ell")
        );
        let parts = call("split", vec![s("/cars/42/state"), s("/")], &ctx).unwrap();
        assert_eq!(call("nth", vec![Value::from(2), parts], &ctx).unwrap(), s("42"));
        assert!(check("nope", 1).is_err());
        assert!(check("upper", 2).is_err());
    }
}

//! Evaluating rule expressions (sqlparser's AST) over a JSON context.
//!
//! Values are `serde_json::Value`s. Missing fields are `null`; comparisons
//! with `null` are false, as in SQL's three-valued logic collapsed to a filter.

use serde_json::{Map, Value};
use sqlparser::ast::{
    BinaryOperator, CaseWhen, Expr, FunctionArg, FunctionArgExpr, FunctionArguments, InTarget, UnaryOperator,
    Value as SqlValue,
};

use super::functions;
use super::value::{as_f64, as_text, num, number_from_str, truthy, EvalResult};

/// Checks once, when a rule is created, that every expression is one we can
/// evaluate and every function is known, so that bad rules are refused with
/// a clear message instead of failing on each message.
pub fn check(e: &Expr) -> Result<(), String> {
    match e {
        Expr::Identifier(_) | Expr::CompoundIdentifier(_) | Expr::Value(_) => Ok(()),
        Expr::Nested(x) | Expr::IsNull(x) | Expr::IsNotNull(x) | Expr::IsTrue(x) | Expr::IsFalse(x) => check(x),
        Expr::UnaryOp { op, expr } => match op {
            UnaryOperator::Not | UnaryOperator::Minus | UnaryOperator::Plus => check(expr),
            other => Err(format!("unsupported operator {other}")),
        },
        Expr::BinaryOp { left, op, right } => {
            binary_supported(op)?;
            check(left)?;
            check(right)
        }
        Expr::Between { expr, low, high, .. } => {
            check(expr)?;
            check(low)?;
            check(high)
        }
        Expr::Like { expr, pattern, .. } | Expr::ILike { expr, pattern, .. } => {
            check(expr)?;
            check(pattern)
        }
        Expr::In { expr, target, .. } => {
            check(expr)?;
            match target {
                InTarget::List(list) => list.iter().try_for_each(check),
                _ => Err("only IN (list) is supported".into()),
            }
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            if let Some(o) = operand {
                check(o)?;
            }
            for CaseWhen { condition, result } in conditions {
                check(condition)?;
                check(result)?;
            }
            else_result.as_deref().map_or(Ok(()), check)
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let args = function_args(&f.args)?;
            functions::check(&name, args.len())?;
            args.into_iter().try_for_each(check)
        }
        other => Err(format!("unsupported expression: {other}")),
    }
}

fn binary_supported(op: &BinaryOperator) -> Result<(), String> {
    use BinaryOperator as B;
    match op {
        B::Plus
        | B::Minus
        | B::Multiply
        | B::Divide
        | B::Modulo
        | B::Eq
        | B::NotEq
        | B::Lt
        | B::LtEq
        | B::Gt
        | B::GtEq
        | B::And
        | B::Or
        | B::StringConcat => Ok(()),
        other => Err(format!("unsupported operator {other}")),
    }
}

fn function_args(args: &FunctionArguments) -> Result<Vec<&Expr>, String> {
    match args {
        FunctionArguments::None => Ok(Vec::new()),
        FunctionArguments::List(list) => list
            .args
            .iter()
            .map(|a| match a {
                FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Ok(e),
                other => Err(format!("unsupported function argument {other}")),
            })
            .collect(),
        FunctionArguments::Subquery(_) => Err("subqueries are not supported".into()),
    }
}

/// Evaluates `e` with `ctx` holding the fields (`clientid`, `payload`, ...).
pub fn eval(e: &Expr, ctx: &Map<String, Value>) -> EvalResult {
    match e {
        Expr::Identifier(id) => Ok(ctx.get(&id.value).cloned().unwrap_or(Value::Null)),
        Expr::CompoundIdentifier(parts) => {
            let mut v = ctx.get(&parts[0].value).unwrap_or(&Value::Null);
            for p in &parts[1..] {
                v = field(v, &p.value);
            }
            Ok(v.clone())
        }
        Expr::Value(v) => literal(&v.value),
        Expr::Nested(x) => eval(x, ctx),
        Expr::IsNull(x) => Ok(Value::Bool(eval(x, ctx)?.is_null())),
        Expr::IsNotNull(x) => Ok(Value::Bool(!eval(x, ctx)?.is_null())),
        Expr::IsTrue(x) => Ok(Value::Bool(eval(x, ctx)? == Value::Bool(true))),
        Expr::IsFalse(x) => Ok(Value::Bool(eval(x, ctx)? == Value::Bool(false))),
        Expr::UnaryOp { op, expr } => {
            let v = eval(expr, ctx)?;
            match op {
                UnaryOperator::Not => Ok(Value::Bool(!truthy(&v))),
                UnaryOperator::Minus => arith(&Value::from(0), &v, '-'),
                _ => Ok(v),
            }
        }
        Expr::BinaryOp { left, op, right } => binary(op, left, right, ctx),
        Expr::Between {
            expr,
            negated,
            low,
            high,
        } => {
            let v = eval(expr, ctx)?;
            let inside = compare(&v, &eval(low, ctx)?).is_some_and(|o| o.is_ge())
                && compare(&v, &eval(high, ctx)?).is_some_and(|o| o.is_le());
            Ok(Value::Bool(inside != *negated))
        }
        Expr::Like {
            negated, expr, pattern, ..
        } => like(ctx, expr, pattern, *negated, false),
        Expr::ILike {
            negated, expr, pattern, ..
        } => like(ctx, expr, pattern, *negated, true),
        Expr::In {
            expr, target, negated, ..
        } => {
            let v = eval(expr, ctx)?;
            let InTarget::List(list) = target else {
                return Err("only IN (list) is supported".into());
            };
            let mut found = false;
            for item in list {
                if equal(&v, &eval(item, ctx)?) {
                    found = true;
                    break;
                }
            }
            Ok(Value::Bool(found != *negated))
        }
        Expr::Case {
            operand,
            conditions,
            else_result,
            ..
        } => {
            let subject = operand.as_deref().map(|o| eval(o, ctx)).transpose()?;
            for CaseWhen { condition, result } in conditions {
                let c = eval(condition, ctx)?;
                let hit = match &subject {
                    Some(s) => equal(s, &c),
                    None => truthy(&c),
                };
                if hit {
                    return eval(result, ctx);
                }
            }
            else_result.as_deref().map_or(Ok(Value::Null), |e| eval(e, ctx))
        }
        Expr::Function(f) => {
            let name = f.name.to_string().to_ascii_lowercase();
            let args = function_args(&f.args)?
                .into_iter()
                .map(|a| eval(a, ctx))
                .collect::<Result<Vec<_>, _>>()?;
            functions::call(&name, args, ctx)
        }
        other => Err(format!("unsupported expression: {other}")),
    }
}

/// `v.name`: an object field, or an array element for a numeric name (1-based, as EMQX's `nth`).
fn field<'a>(v: &'a Value, name: &str) -> &'a Value {
    match v {
        Value::Object(m) => m.get(name).unwrap_or(&Value::Null),
        Value::Array(a) => name
            .parse::<usize>()
            .ok()
            .and_then(|i| i.checked_sub(1))
            .and_then(|i| a.get(i))
            .unwrap_or(&Value::Null),
        _ => &Value::Null,
    }
}

fn literal(v: &SqlValue) -> EvalResult {
    Ok(match v {
        SqlValue::Number(n, _) => number_from_str(n).ok_or_else(|| format!("bad number {n}"))?,
        SqlValue::SingleQuotedString(s) | SqlValue::DoubleQuotedString(s) => Value::String(s.clone()),
        SqlValue::Boolean(b) => Value::Bool(*b),
        SqlValue::Null => Value::Null,
        other => return Err(format!("unsupported literal {other}")),
    })
}

fn binary(op: &BinaryOperator, left: &Expr, right: &Expr, ctx: &Map<String, Value>) -> EvalResult {
    use BinaryOperator as B;
    // AND/OR short-circuit.
    match op {
        B::And => return Ok(Value::Bool(truthy(&eval(left, ctx)?) && truthy(&eval(right, ctx)?))),
        B::Or => return Ok(Value::Bool(truthy(&eval(left, ctx)?) || truthy(&eval(right, ctx)?))),
        _ => {}
    }
    let (l, r) = (eval(left, ctx)?, eval(right, ctx)?);
    Ok(match op {
        B::Plus => return arith(&l, &r, '+'),
        B::Minus => return arith(&l, &r, '-'),
        B::Multiply => return arith(&l, &r, '*'),
        B::Divide => return arith(&l, &r, '/'),
        B::Modulo => return arith(&l, &r, '%'),
        B::StringConcat => Value::String(as_text(&l) + &as_text(&r)),
        B::Eq => Value::Bool(equal(&l, &r)),
        B::NotEq => Value::Bool(!l.is_null() && !r.is_null() && !equal(&l, &r)),
        B::Lt => Value::Bool(compare(&l, &r).is_some_and(|o| o.is_lt())),
        B::LtEq => Value::Bool(compare(&l, &r).is_some_and(|o| o.is_le())),
        B::Gt => Value::Bool(compare(&l, &r).is_some_and(|o| o.is_gt())),
        B::GtEq => Value::Bool(compare(&l, &r).is_some_and(|o| o.is_ge())),
        other => return Err(format!("unsupported operator {other}")),
    })
}

fn arith(l: &Value, r: &Value, op: char) -> EvalResult {
    if l.is_null() || r.is_null() {
        return Ok(Value::Null);
    }
    // `+` on two non-numeric strings concatenates, as in EMQX.
    if op == '+' {
        if let (Value::String(a), Value::String(b)) = (l, r) {
            if as_f64(l).is_none() || as_f64(r).is_none() {
                return Ok(Value::String(format!("{a}{b}")));
            }
        }
    }
    let (Some(a), Some(b)) = (as_f64(l), as_f64(r)) else {
        return Err(format!("cannot compute {l} {op} {r}"));
    };
    let both_int = l.as_i64().is_some() && r.as_i64().is_some();
    let out = match op {
        '+' => a + b,
        '-' => a - b,
        '*' => a * b,
        '/' => {
            if b == 0.0 {
                return Err("division by zero".into());
            }
            a / b
        }
        '%' => {
            if b == 0.0 {
                return Err("division by zero".into());
            }
            a % b
        }
        _ => unreachable!("operators are listed above"),
    };
    if both_int && op != '/' {
        return Ok(Value::from(out as i64));
    }
    Ok(num(out))
}

/// Equality with numbers compared by value and numeric strings equal to numbers.
pub fn equal(l: &Value, r: &Value) -> bool {
    if l.is_null() || r.is_null() {
        return false;
    }
    match (l, r) {
        (Value::Number(_), _) | (_, Value::Number(_)) => match (as_f64(l), as_f64(r)) {
            (Some(a), Some(b)) => a == b,
            _ => false,
        },
        _ => l == r,
    }
}

pub fn compare(l: &Value, r: &Value) -> Option<std::cmp::Ordering> {
    match (l, r) {
        (Value::String(a), Value::String(b)) => Some(a.cmp(b)),
        (Value::Null, _) | (_, Value::Null) => None,
        _ => as_f64(l)?.partial_cmp(&as_f64(r)?),
    }
}

fn like(ctx: &Map<String, Value>, expr: &Expr, pattern: &Expr, negated: bool, fold: bool) -> EvalResult {
    let v = eval(expr, ctx)?;
    let p = eval(pattern, ctx)?;
    if v.is_null() || p.is_null() {
        return Ok(Value::Bool(false));
    }
    let (mut s, mut p) = (as_text(&v), as_text(&p));
    if fold {
        s = s.to_lowercase();
        p = p.to_lowercase();
    }
    Ok(Value::Bool(like_match(&s, &p) != negated))
}

/// SQL LIKE: `%` any run, `_` one character.
fn like_match(s: &str, p: &str) -> bool {
    let s: Vec<char> = s.chars().collect();
    let p: Vec<char> = p.chars().collect();
    let (mut si, mut pi) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == '_' || p[pi] == s[si]) {
            si += 1;
            pi += 1;
        } else if pi < p.len() && p[pi] == '%' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '%' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn like_patterns() {
        assert!(like_match("cars/1/state", "cars/%/state"));
        assert!(like_match("abc", "a_c"));
        assert!(!like_match("abcd", "a_c"));
        assert!(like_match("", "%"));
    }
}

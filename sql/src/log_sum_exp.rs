//! `log_sum_exp(x)`: `ln Σ eˣ` over a group, computed so that it never overflows or underflows
//! to `−∞` (an aggregate function of the views' SQL and of `tandem sql`).
//!
//! The decayed scores are sums of `e^(ln w + (ts − R)/τ)` kept in log space. Shifting every term
//! by one constant near the cutoff (as the views did) loses any event more than ~745 τ (14 years
//! at τ = 7 days) before it: `exp` underflows to 0 and a category of old events only scored
//! `ln 0 = −∞`. Here each group keeps its own largest term `m` and the sum `s = Σ e^(x − m)`
//! (so `s ≥ 1`), rescaling `s` when a larger term comes: the result `m + ln s` is finite for any
//! finite terms, whatever their age, and partial states merge the same way. `NULL` and
//! non-finite terms are left out; a group with none is `NULL`.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, Float64Array};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef, Float64Type};
use datafusion::common::{Result, ScalarValue};
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::utils::format_state_name;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, EmitTo, GroupsAccumulator, Signature, Volatility,
};

/// The name in SQL.
pub const NAME: &str = "log_sum_exp";

/// The aggregate function, to register with a session.
pub fn udaf() -> AggregateUDF {
    AggregateUDF::from(LogSumExp {
        signature: Signature::exact(vec![DataType::Float64], Volatility::Immutable),
    })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct LogSumExp {
    signature: Signature,
}

/// One group's state: its largest term and the sum of `e^(x − max)` (0 when empty).
#[derive(Debug, Clone, Copy)]
struct State {
    max: f64,
    sum: f64,
}

impl State {
    const EMPTY: State = State {
        max: f64::NEG_INFINITY,
        sum: 0.0,
    };

    /// Adds `sum · e^max` (one term: `sum` = 1).
    #[inline]
    fn add(&mut self, max: f64, sum: f64) {
        if sum.is_nan() || sum <= 0.0 || !max.is_finite() {
            return;
        }
        if self.sum == 0.0 {
            *self = State { max, sum };
        } else if max > self.max {
            self.sum = self.sum * (self.max - max).exp() + sum;
            self.max = max;
        } else {
            self.sum += sum * (max - self.max).exp();
        }
    }

    fn value(self) -> Option<f64> {
        (self.sum > 0.0).then(|| self.max + self.sum.ln())
    }
}

impl AggregateUDFImpl for LogSumExp {
    fn name(&self) -> &str {
        NAME
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> Result<DataType> {
        Ok(DataType::Float64)
    }

    fn accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn Accumulator>> {
        Ok(Box::new(One(State::EMPTY)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> Result<Vec<FieldRef>> {
        Ok(vec![
            Arc::new(Field::new(
                format_state_name(args.name, "max"),
                DataType::Float64,
                false,
            )),
            Arc::new(Field::new(
                format_state_name(args.name, "sum"),
                DataType::Float64,
                false,
            )),
        ])
    }

    fn groups_accumulator_supported(&self, _: AccumulatorArgs) -> bool {
        true
    }

    fn create_groups_accumulator(&self, _: AccumulatorArgs) -> Result<Box<dyn GroupsAccumulator>> {
        Ok(Box::new(Groups(Vec::new())))
    }
}

/// The terms of `values[0]` that count: non-null, finite, and let through by `filter`.
fn terms<'a>(
    values: &'a [ArrayRef],
    filter: Option<&'a BooleanArray>,
) -> impl Iterator<Item = (usize, f64)> + 'a {
    let x = values[0].as_primitive::<Float64Type>();
    (0..x.len()).filter_map(move |i| {
        let keep = x.is_valid(i) && filter.is_none_or(|f| f.is_valid(i) && f.value(i));
        keep.then(|| (i, x.value(i))).filter(|(_, v)| v.is_finite())
    })
}

/// The (max, sum) columns of partial states.
fn states(values: &[ArrayRef]) -> (&Float64Array, &Float64Array) {
    (
        values[0].as_primitive::<Float64Type>(),
        values[1].as_primitive::<Float64Type>(),
    )
}

/// One group (the row-at-a-time accumulator DataFusion also asks for).
#[derive(Debug)]
struct One(State);

impl Accumulator for One {
    fn update_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        for (_, x) in terms(values, None) {
            self.0.add(x, 1.0);
        }
        Ok(())
    }

    fn merge_batch(&mut self, values: &[ArrayRef]) -> Result<()> {
        let (max, sum) = states(values);
        for i in 0..max.len() {
            self.0.add(max.value(i), sum.value(i));
        }
        Ok(())
    }

    fn state(&mut self) -> Result<Vec<ScalarValue>> {
        Ok(vec![
            ScalarValue::Float64(Some(self.0.max)),
            ScalarValue::Float64(Some(self.0.sum)),
        ])
    }

    fn evaluate(&mut self) -> Result<ScalarValue> {
        Ok(ScalarValue::Float64(self.0.value()))
    }

    fn size(&self) -> usize {
        size_of::<Self>()
    }
}

/// Every group of a hash aggregation, by group index.
struct Groups(Vec<State>);

impl Groups {
    fn take(&mut self, emit_to: EmitTo) -> Vec<State> {
        emit_to.take_needed(&mut self.0)
    }
}

impl GroupsAccumulator for Groups {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&BooleanArray>,
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups, State::EMPTY);
        for (i, x) in terms(values, opt_filter) {
            self.0[group_indices[i]].add(x, 1.0);
        }
        Ok(())
    }

    fn merge_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        total_num_groups: usize,
    ) -> Result<()> {
        self.0.resize(total_num_groups, State::EMPTY);
        let (max, sum) = states(values);
        for (i, g) in group_indices.iter().enumerate() {
            self.0[*g].add(max.value(i), sum.value(i));
        }
        Ok(())
    }

    fn evaluate(&mut self, emit_to: EmitTo) -> Result<ArrayRef> {
        let values: Float64Array = self.take(emit_to).into_iter().map(State::value).collect();
        Ok(Arc::new(values))
    }

    fn state(&mut self, emit_to: EmitTo) -> Result<Vec<ArrayRef>> {
        let taken = self.take(emit_to);
        let max: Float64Array = taken.iter().map(|s| Some(s.max)).collect();
        let sum: Float64Array = taken.iter().map(|s| Some(s.sum)).collect();
        Ok(vec![Arc::new(max), Arc::new(sum)])
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&BooleanArray>,
    ) -> Result<Vec<ArrayRef>> {
        let n = values[0].len();
        let mut max = vec![f64::NEG_INFINITY; n];
        let mut sum = vec![0.0; n];
        for (i, x) in terms(values, opt_filter) {
            max[i] = x;
            sum[i] = 1.0;
        }
        Ok(vec![
            Arc::new(Float64Array::from(max)),
            Arc::new(Float64Array::from(sum)),
        ])
    }

    fn size(&self) -> usize {
        self.0.capacity() * size_of::<State>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lse(terms: &[f64]) -> Option<f64> {
        let mut s = State::EMPTY;
        for t in terms {
            s.add(*t, 1.0);
        }
        s.value()
    }

    #[test]
    fn sums_in_log_space_without_underflow() {
        // Terms 3,000 apart: e^-3000 is 0 in f64, yet each alone is kept.
        assert_eq!(lse(&[-2600.0]), Some(-2600.0));
        assert_eq!(lse(&[-2600.0, 400.0]), Some(400.0));
        let two = lse(&[1.0, 1.0]).unwrap();
        assert!((two - (1.0 + 2f64.ln())).abs() < 1e-15);
        assert_eq!(lse(&[]), None);
        assert_eq!(lse(&[f64::NEG_INFINITY, f64::NAN]), None);
        // Any order, any split, the same.
        let xs = [-700.0, 3.5, -1e4, 12.25, 12.25, -3.0];
        let whole = lse(&xs).unwrap();
        let mut a = State::EMPTY;
        let mut b = State::EMPTY;
        for (i, x) in xs.iter().enumerate() {
            if i % 2 == 0 { &mut a } else { &mut b }.add(*x, 1.0);
        }
        b.add(a.max, a.sum);
        assert!((b.value().unwrap() - whole).abs() < 1e-12);
        let mut rev = xs;
        rev.reverse();
        assert!((lse(&rev).unwrap() - whole).abs() < 1e-12);
    }
}

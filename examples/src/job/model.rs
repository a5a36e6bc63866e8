//! Classifiers with hand-written forward and backward passes on ndarray:
//! softmax regression and a two-layer ReLU MLP, both with cross-entropy loss.

use std::collections::BTreeMap;

use ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis, Ix1, Ix2};

use ps_worker::TensorDecl;

/// Parameters or gradients by tensor name.
pub type Tensors = BTreeMap<String, ArrayD<f32>>;

/// Which model to train.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum ModelKind {
    /// Softmax (multinomial logistic) regression.
    Softmax,
    /// Two-layer perceptron: ReLU hidden layer, softmax output.
    Mlp,
}

/// A classifier over `inputs` features and `classes` classes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Model {
    /// Which architecture.
    pub kind: ModelKind,
    /// Input features.
    pub inputs: usize,
    /// Hidden units (MLP only).
    pub hidden: usize,
    /// Output classes.
    pub classes: usize,
    /// Seed of the initial weights.
    pub seed: u64,
}

fn matrix<'a>(t: &'a Tensors, name: &str) -> ArrayView2<'a, f32> {
    t[name].view().into_dimensionality::<Ix2>().expect("declared 2-D")
}

fn vector(t: &Tensors, name: &str) -> Array1<f32> {
    t[name].view().into_dimensionality::<Ix1>().expect("declared 1-D").to_owned()
}

/// Row-wise softmax of `logits`, in place, numerically stable.
fn softmax_rows(logits: &mut Array2<f32>) {
    for mut row in logits.rows_mut() {
        let max = row.fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        row.mapv_inplace(|v| (v - max).exp());
        let sum = row.sum();
        row /= sum;
    }
}

impl Model {
    /// The tensors to declare, with seeded He-style initial values.
    pub fn tensors(&self) -> Vec<TensorDecl> {
        match self.kind {
            ModelKind::Softmax => vec![
                TensorDecl::new("softmax.weight", &[self.inputs, self.classes]),
                TensorDecl::new("softmax.bias", &[self.classes]),
            ],
            ModelKind::Mlp => vec![
                TensorDecl::new("fc1.weight", &[self.inputs, self.hidden]).normal(
                    0.0,
                    (2.0 / self.inputs as f32).sqrt(),
                    self.seed,
                ),
                TensorDecl::new("fc1.bias", &[self.hidden]),
                TensorDecl::new("fc2.weight", &[self.hidden, self.classes]).normal(
                    0.0,
                    (1.0 / self.hidden as f32).sqrt(),
                    self.seed.wrapping_add(1),
                ),
                TensorDecl::new("fc2.bias", &[self.classes]),
            ],
        }
    }

    /// Class probabilities for each row of `x`, and the hidden activations (MLP).
    fn forward(&self, p: &Tensors, x: ArrayView2<f32>) -> (Array2<f32>, Option<Array2<f32>>) {
        match self.kind {
            ModelKind::Softmax => {
                let mut z = x.dot(&matrix(p, "softmax.weight")) + vector(p, "softmax.bias");
                softmax_rows(&mut z);
                (z, None)
            }
            ModelKind::Mlp => {
                let mut h = x.dot(&matrix(p, "fc1.weight")) + vector(p, "fc1.bias");
                h.mapv_inplace(|v| v.max(0.0));
                let mut z = h.dot(&matrix(p, "fc2.weight")) + vector(p, "fc2.bias");
                softmax_rows(&mut z);
                (z, Some(h))
            }
        }
    }

    /// Mean cross-entropy on (x, y) and its gradient for every tensor.
    pub fn loss_and_grads(&self, p: &Tensors, x: ArrayView2<f32>, y: &[u8]) -> (f32, Tensors) {
        let n = x.nrows() as f32;
        let (mut probs, hidden) = self.forward(p, x);
        let loss =
            y.iter().enumerate().map(|(i, c)| -probs[[i, usize::from(*c)]].max(1e-12).ln()).sum::<f32>() / n;
        // d loss / d logits = (probs - onehot) / n
        for (i, c) in y.iter().enumerate() {
            probs[[i, usize::from(*c)]] -= 1.0;
        }
        let dz = probs / n;
        let mut g = Tensors::new();
        match (self.kind, hidden) {
            (ModelKind::Mlp, Some(h)) => {
                let mut dh = dz.dot(&matrix(p, "fc2.weight").t());
                dh.zip_mut_with(&h, |d, h| {
                    if *h <= 0.0 {
                        *d = 0.0;
                    }
                });
                g.insert("fc2.weight".into(), h.t().dot(&dz).into_dyn());
                g.insert("fc2.bias".into(), dz.sum_axis(Axis(0)).into_dyn());
                g.insert("fc1.weight".into(), x.t().dot(&dh).into_dyn());
                g.insert("fc1.bias".into(), dh.sum_axis(Axis(0)).into_dyn());
            }
            _ => {
                g.insert("softmax.weight".into(), x.t().dot(&dz).into_dyn());
                g.insert("softmax.bias".into(), dz.sum_axis(Axis(0)).into_dyn());
            }
        }
        (loss, g)
    }

    /// Fraction of rows of `x` whose most probable class is the label.
    pub fn accuracy(&self, p: &Tensors, x: ArrayView2<f32>, y: &[u8]) -> f32 {
        if y.is_empty() {
            return 0.0;
        }
        let (probs, _) = self.forward(p, x);
        let correct = probs
            .rows()
            .into_iter()
            .zip(y)
            .filter(|(row, label)| {
                let best = row
                    .iter()
                    .enumerate()
                    .fold((0, f32::NEG_INFINITY), |b, (i, v)| if *v > b.1 { (i, *v) } else { b });
                best.0 == usize::from(**label)
            })
            .count();
        correct as f32 / y.len() as f32
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use rand_chacha::ChaCha8Rng;
    use rand_chacha::rand_core::SeedableRng;

    fn random_params(model: &Model, rng: &mut ChaCha8Rng) -> Tensors {
        model
            .tensors()
            .iter()
            .map(|t| {
                let a = ArrayD::from_shape_fn(t.shape(), |_| rng.random_range(-0.5f32..0.5));
                (t.name().to_string(), a)
            })
            .collect()
    }

    /// Central finite differences on sampled coordinates agree with backprop.
    fn gradient_check(kind: ModelKind) {
        let model = Model { kind, inputs: 5, hidden: 4, classes: 3, seed: 1 };
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let params = random_params(&model, &mut rng);
        let x = Array2::from_shape_fn((6, 5), |_| rng.random_range(-1.0f32..1.0));
        let y: Vec<u8> = (0..6).map(|i| (i % 3) as u8).collect();
        let (_, grads) = model.loss_and_grads(&params, x.view(), &y);
        let eps = 1e-2f32;
        let mut checked = 0;
        for (name, g) in &grads {
            assert_eq!(g.shape(), params[name].shape(), "{name}");
            for i in 0..g.len() {
                let mut plus = params.clone();
                let mut minus = params.clone();
                plus.get_mut(name).unwrap().as_slice_mut().unwrap()[i] += eps;
                minus.get_mut(name).unwrap().as_slice_mut().unwrap()[i] -= eps;
                let numeric = (model.loss_and_grads(&plus, x.view(), &y).0
                    - model.loss_and_grads(&minus, x.view(), &y).0)
                    / (2.0 * eps);
                let analytic = g.as_slice().unwrap()[i];
                assert!(
                    (numeric - analytic).abs() <= 2e-3 + 2e-2 * analytic.abs(),
                    "{name}[{i}]: numeric {numeric} vs backprop {analytic}"
                );
                checked += 1;
            }
        }
        assert!(checked > 10);
    }

    #[test]
    fn softmax_gradient_check() {
        gradient_check(ModelKind::Softmax);
    }

    #[test]
    fn mlp_gradient_check() {
        gradient_check(ModelKind::Mlp);
    }

    #[test]
    fn uniform_predictions_have_loss_ln_classes() {
        let model = Model { kind: ModelKind::Softmax, inputs: 4, hidden: 0, classes: 10, seed: 0 };
        let params: Tensors =
            model.tensors().iter().map(|t| (t.name().into(), ArrayD::zeros(t.shape()))).collect();
        let x = Array2::ones((3, 4));
        let (loss, _) = model.loss_and_grads(&params, x.view(), &[0, 5, 9]);
        assert!((loss - 10f32.ln()).abs() < 1e-5, "{loss}");
    }
}

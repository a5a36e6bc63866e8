//! The tensor shapes a benchmark step moves: one tensor of a given size, or
//! a model's parameter tensors given as a list or a named preset.

/// A named set of tensors, pushed and pulled together in each step.
#[derive(Clone, Debug, PartialEq)]
pub struct Load {
    /// How the load was asked for (`64M`, `resnet18`, `one:resnet18` ...).
    pub name: String,
    /// Tensor names and shapes, in declaration order.
    pub tensors: Vec<(String, Vec<usize>)>,
}

impl Load {
    /// One tensor called `bench` of `bytes` bytes of f32.
    pub fn one_tensor(name: &str, bytes: usize) -> Self {
        Self { name: name.into(), tensors: vec![("bench".into(), vec![bytes / 4])] }
    }

    /// Elements over every tensor.
    pub fn elements(&self) -> usize {
        self.tensors.iter().map(|(_, shape)| shape.iter().product::<usize>()).sum()
    }

    /// Bytes of f32 over every tensor.
    pub fn bytes(&self) -> usize {
        self.elements() * 4
    }

    /// Parses a model: `resnet18` (its 62 parameter tensors, 11.7 M
    /// parameters), or tensors as `COUNT*DIMS` terms joined by `+` with DIMS
    /// like `64x3x7x7` (`100*4096` is 100 tensors of 4,096 elements); a
    /// `one:` prefix makes one flat tensor of the same total elements.
    pub fn parse(spec: &str) -> Result<Self, String> {
        if let Some(rest) = spec.strip_prefix("one:") {
            let model = Self::parse(rest)?;
            return Ok(Self { name: spec.into(), tensors: vec![("bench".into(), vec![model.elements()])] });
        }
        let shapes = match spec {
            "resnet18" => resnet18(),
            _ => terms(spec)?,
        };
        if shapes.is_empty() || shapes.iter().any(|s| s.iter().product::<usize>() == 0) {
            return Err(format!("model {spec:?}: every tensor needs at least one element"));
        }
        let tensors = shapes.into_iter().enumerate().map(|(i, shape)| (format!("t{i:03}"), shape)).collect();
        Ok(Self { name: spec.into(), tensors })
    }
}

/// The shapes of `COUNT*DIMS+COUNT*DIMS...`.
fn terms(spec: &str) -> Result<Vec<Vec<usize>>, String> {
    let bad = |why: String| {
        format!(
            "model {spec:?}: {why} (expected `resnet18`, or COUNT*DIMS terms joined by +, like 100*4096 or 2*64x64+1*10)"
        )
    };
    let mut shapes = Vec::new();
    for term in spec.split('+') {
        let (count, dims) = term.split_once('*').unwrap_or(("1", term));
        let count: usize = count.trim().parse().map_err(|e| bad(format!("count {count:?}: {e}")))?;
        let dims: Vec<usize> = dims
            .split('x')
            .map(|d| d.trim().parse::<usize>().map_err(|e| bad(format!("dimension {d:?}: {e}"))))
            .collect::<Result<_, _>>()?;
        shapes.extend(std::iter::repeat_n(dims, count));
    }
    Ok(shapes)
}

/// The parameter shapes of torchvision's ResNet-18 (ImageNet head), in
/// `named_parameters()` order: 62 tensors, 11,689,512 parameters.
pub fn resnet18() -> Vec<Vec<usize>> {
    let mut shapes = vec![vec![64, 3, 7, 7], vec![64], vec![64]];
    let block = |shapes: &mut Vec<Vec<usize>>, cin: usize, cout: usize, down: bool| {
        shapes.extend([
            vec![cout, cin, 3, 3],
            vec![cout],
            vec![cout],
            vec![cout, cout, 3, 3],
            vec![cout],
            vec![cout],
        ]);
        if down {
            shapes.extend([vec![cout, cin, 1, 1], vec![cout], vec![cout]]);
        }
    };
    block(&mut shapes, 64, 64, false);
    block(&mut shapes, 64, 64, false);
    for (cin, cout) in [(64, 128), (128, 256), (256, 512)] {
        block(&mut shapes, cin, cout, true);
        block(&mut shapes, cout, cout, false);
    }
    shapes.extend([vec![1000, 512], vec![1000]]);
    shapes
}

/// The CPU model this machine reports (`/proc/cpuinfo`), for every
/// benchmark's header: ratios differ between CPUs.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet18_has_62_tensors_and_its_parameter_count() {
        let model = Load::parse("resnet18").expect("preset");
        assert_eq!(model.tensors.len(), 62);
        assert_eq!(model.elements(), 11_689_512);
        let one = Load::parse("one:resnet18").expect("one");
        assert_eq!(one.tensors, vec![("bench".to_string(), vec![11_689_512])]);
    }

    #[test]
    fn terms_repeat_shapes_and_bad_ones_say_what_is_expected() {
        let model = Load::parse("100*4096").expect("terms");
        assert_eq!((model.tensors.len(), model.bytes()), (100, 1_638_400));
        assert_eq!(Load::parse("2*3x4+1*5").expect("terms").elements(), 29);
        let err = Load::parse("2*3y4").expect_err("bad dims");
        assert!(err.contains("COUNT*DIMS"), "{err}");
        assert!(Load::parse("0*5").is_err());
    }
}

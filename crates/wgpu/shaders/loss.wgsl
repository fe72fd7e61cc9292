// Fused softmax cross-entropy over logits (n, classes).

var<workgroup> loss_part: array<f32, 256>;
var<workgroup> correct_part: array<f32, 256>;

//! kernel softmax_cross_entropy
// [logits, labels, dlogits, stats, n, classes, grad_scale, write_grad, smoothing, smoothing / classes];
// r0 = logits, r1 = labels, w0 = dlogits, w1 = stats. One workgroup: each invocation takes every
// 256th sample; the loss sum and correct count are added to stats[0], stats[1]. With label
// smoothing s the target is (1 - s) onehot + s / classes (reference::softmax_cross_entropy).
@compute @workgroup_size(256)
fn softmax_cross_entropy(@builtin(local_invocation_id) lid: vec3<u32>) {
    let n = pu(4u);
    let classes = pu(5u);
    let scale = pf(6u);
    let write = pu(7u) != 0u;
    let smoothing = pf(8u);
    let uniform_target = pf(9u);
    let l = lid.x;
    var loss = 0.0;
    var correct = 0.0;
    for (var i = l; i < n; i += 256u) {
        let row = pu(0u) + i * classes;
        let label = r1[pu(1u) + i];
        var best = bitcast<f32>(r0[row]);
        var arg = 0u;
        var total = best;
        for (var c = 1u; c < classes; c++) {
            let v = bitcast<f32>(r0[row + c]);
            total += v;
            if (v > best) {
                best = v;
                arg = c;
            }
        }
        var sum = 0.0;
        for (var c = 0u; c < classes; c++) {
            sum += exp(bitcast<f32>(r0[row + c]) - best);
        }
        let log_z = best + log(sum);
        if (label < classes) {
            let mean_logit = total / f32(classes);
            loss += (1.0 - smoothing) * (log_z - bitcast<f32>(r0[row + label])) + smoothing * (log_z - mean_logit);
            correct += select(0.0, 1.0, arg == label);
        }
        if (write) {
            for (var c = 0u; c < classes; c++) {
                let prob = exp(bitcast<f32>(r0[row + c]) - log_z);
                let goal = (1.0 - smoothing) * select(0.0, 1.0, c == label) + uniform_target;
                w0[pu(2u) + i * classes + c] = bitcast<u32>(scale * (prob - goal));
            }
        }
    }
    loss_part[l] = loss;
    correct_part[l] = correct;
    workgroupBarrier();
    for (var s = 128u; s > 0u; s >>= 1u) {
        if (l < s) {
            loss_part[l] += loss_part[l + s];
            correct_part[l] += correct_part[l + s];
        }
        workgroupBarrier();
    }
    if (l == 0u) {
        w1[pu(3u)] = bitcast<u32>(bitcast<f32>(w1[pu(3u)]) + loss_part[0]);
        w1[pu(3u) + 1u] = bitcast<u32>(bitcast<f32>(w1[pu(3u) + 1u]) + correct_part[0]);
    }
}

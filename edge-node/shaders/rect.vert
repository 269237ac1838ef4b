#version 450
// One instanced quad per rectangle: 6 vertices, corners chosen by gl_VertexIndex.
layout(location = 0) in vec4 in_rect;   // x, y, w, h in pixels, origin top-left
layout(location = 1) in vec4 in_color;  // straight-alpha RGBA
layout(push_constant) uniform Push { vec2 target_px; } push;
layout(location = 0) out vec4 out_color;

const vec2 CORNERS[6] = vec2[](vec2(0, 0), vec2(1, 0), vec2(0, 1), vec2(0, 1), vec2(1, 0), vec2(1, 1));

void main() {
    vec2 p = in_rect.xy + CORNERS[gl_VertexIndex] * in_rect.zw;
    // Vulkan clip space has y pointing down, so pixel rows map directly.
    gl_Position = vec4(p / push.target_px * 2.0 - 1.0, 0.0, 1.0);
    out_color = in_color;
}

//! The Vulkan machinery behind [`super::VulkanContext`] and [`super::Renderer`].
//!
//! Every `unsafe` block here is a Vulkan call; its `SAFETY:` line names the valid-usage rule the
//! code upholds. Handles are destroyed in reverse order of creation, after the GPU is done.

#![allow(unsafe_code)]

use super::{DeviceInfo, FRAMES_IN_FLIGHT, GpuTimings, MAX_RECTS, RgbaFrame};
use crate::game::{DrawList, Rect};
use crate::{Error, Result};
use ash::vk;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

const VERT_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rect.vert.spv"));
const FRAG_SPV: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/rect.frag.spv"));
const FORMAT: vk::Format = vk::Format::R8G8B8A8_UNORM;
const NVIDIA_VENDOR_ID: u32 = 0x10de;
/// Timestamps per slot: before drawing, after drawing, after the copy.
const QUERIES_PER_SLOT: u32 = 3;

fn vk_err(what: &'static str) -> impl Fn(vk::Result) -> Error {
    move |e| Error::Vulkan(format!("{what} failed: {e}"))
}

pub(super) struct Context {
    // Field order is drop order for the plain fields; `Drop` destroys the handles explicitly.
    pub(super) info: DeviceInfo,
    pub(super) device: ash::Device,
    queue: Mutex<vk::Queue>,
    queue_family: u32,
    memory: vk::PhysicalDeviceMemoryProperties,
    timestamp_period_ns: f64,
    instance: ash::Instance,
    _entry: ash::Entry,
}

struct Candidate {
    physical: vk::PhysicalDevice,
    family: u32,
    score: u32,
    name: String,
    props: vk::PhysicalDeviceProperties,
    timestamp_bits: u32,
}

fn version_string(v: u32) -> String {
    format!(
        "{}.{}.{}",
        vk::api_version_major(v),
        vk::api_version_minor(v),
        vk::api_version_patch(v)
    )
}

fn device_type_name(t: vk::PhysicalDeviceType) -> &'static str {
    match t {
        vk::PhysicalDeviceType::DISCRETE_GPU => "discrete-gpu",
        vk::PhysicalDeviceType::INTEGRATED_GPU => "integrated-gpu",
        vk::PhysicalDeviceType::VIRTUAL_GPU => "virtual-gpu",
        vk::PhysicalDeviceType::CPU => "cpu",
        _ => "other",
    }
}

/// Lower is better: an NVIDIA GPU, then any other GPU, then the CPU.
fn device_score(props: &vk::PhysicalDeviceProperties) -> u32 {
    match props.device_type {
        vk::PhysicalDeviceType::DISCRETE_GPU if props.vendor_id == NVIDIA_VENDOR_ID => 0,
        vk::PhysicalDeviceType::DISCRETE_GPU => 1,
        vk::PhysicalDeviceType::INTEGRATED_GPU => 2,
        vk::PhysicalDeviceType::VIRTUAL_GPU => 3,
        vk::PhysicalDeviceType::CPU => 4,
        _ => 5,
    }
}

impl Context {
    pub(super) fn new() -> Result<Self> {
        // SAFETY: loads the system's libvulkan; `entry` is stored in the context and outlives
        // every handle created through it.
        let entry = unsafe { ash::Entry::load() }.map_err(|e| {
            Error::Vulkan(format!(
                "cannot load the Vulkan loader ({e}); install libvulkan1 and a driver \
                 (mesa-vulkan-drivers renders on the CPU)"
            ))
        })?;
        let app = vk::ApplicationInfo::default()
            .application_name(c"pixelgrid-edge-node")
            .api_version(vk::API_VERSION_1_2);
        let create = vk::InstanceCreateInfo::default().application_info(&app);
        // SAFETY: `create` and `app` are valid for the duration of the call.
        let instance =
            unsafe { entry.create_instance(&create, None) }.map_err(vk_err("vkCreateInstance"))?;
        match Self::open_device(&instance) {
            Ok((info, device, queue, queue_family, memory, timestamp_period_ns)) => Ok(Self {
                info,
                device,
                queue: Mutex::new(queue),
                queue_family,
                memory,
                timestamp_period_ns,
                instance,
                _entry: entry,
            }),
            Err(e) => {
                // SAFETY: nothing created from this instance survives the failed open.
                unsafe { instance.destroy_instance(None) };
                Err(e)
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn open_device(
        instance: &ash::Instance,
    ) -> Result<(
        DeviceInfo,
        ash::Device,
        vk::Queue,
        u32,
        vk::PhysicalDeviceMemoryProperties,
        f64,
    )> {
        // SAFETY: the instance is valid.
        let physicals = unsafe { instance.enumerate_physical_devices() }
            .map_err(vk_err("vkEnumeratePhysicalDevices"))?;
        let wanted = std::env::var("PIXELGRID_VULKAN_DEVICE")
            .ok()
            .filter(|s| !s.is_empty());
        let mut candidates = Vec::new();
        for physical in physicals {
            // SAFETY: `physical` came from this instance.
            let props = unsafe { instance.get_physical_device_properties(physical) };
            let name = props
                .device_name_as_c_str()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_else(|_| "unnamed device".into());
            // SAFETY: as above.
            let families =
                unsafe { instance.get_physical_device_queue_family_properties(physical) };
            let Some((family, fam)) = families
                .iter()
                .enumerate()
                .find(|(_, f)| f.queue_flags.contains(vk::QueueFlags::GRAPHICS))
            else {
                continue;
            };
            candidates.push(Candidate {
                physical,
                family: family as u32,
                score: device_score(&props),
                name,
                props,
                timestamp_bits: fam.timestamp_valid_bits,
            });
        }
        let all_devices: Vec<String> = candidates.iter().map(|c| c.name.clone()).collect();
        let chosen = match &wanted {
            Some(w) => candidates
                .into_iter()
                .find(|c| c.name.contains(w.as_str()))
                .ok_or_else(|| {
                    Error::Vulkan(format!(
                        "PIXELGRID_VULKAN_DEVICE={w:?} matches no device; found: {}",
                        all_devices.join(", ")
                    ))
                })?,
            None => candidates
                .into_iter()
                .min_by_key(|c| c.score)
                .ok_or_else(|| {
                    Error::Vulkan(
                        "no Vulkan device with a graphics queue; install mesa-vulkan-drivers for \
                     CPU rendering or an NVIDIA driver"
                            .into(),
                    )
                })?,
        };

        let mut driver_props = vk::PhysicalDeviceDriverProperties::default();
        let driver = if chosen.props.api_version >= vk::API_VERSION_1_2 {
            let mut props2 = vk::PhysicalDeviceProperties2::default().push_next(&mut driver_props);
            // SAFETY: the device supports Vulkan 1.2, where the driver-properties struct is core.
            unsafe { instance.get_physical_device_properties2(chosen.physical, &mut props2) };
            let name = driver_props
                .driver_name_as_c_str()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            let info = driver_props
                .driver_info_as_c_str()
                .map(|c| c.to_string_lossy().into_owned())
                .unwrap_or_default();
            format!("{name} {info}").trim().to_owned()
        } else {
            format!("driver {:#x}", chosen.props.driver_version)
        };
        let vendor = match chosen.props.vendor_id {
            NVIDIA_VENDOR_ID => "NVIDIA".to_owned(),
            0x1002 => "AMD".to_owned(),
            0x8086 => "Intel".to_owned(),
            _ if driver.contains("Mesa") || chosen.name.contains("llvmpipe") => "Mesa".to_owned(),
            other => format!("vendor {other:#06x}"),
        };

        let priorities = [1.0f32];
        let queue_info = [vk::DeviceQueueCreateInfo::default()
            .queue_family_index(chosen.family)
            .queue_priorities(&priorities)];
        let device_info = vk::DeviceCreateInfo::default().queue_create_infos(&queue_info);
        // SAFETY: one queue from a family that exists; no extensions or features requested.
        let device = unsafe { instance.create_device(chosen.physical, &device_info, None) }
            .map_err(vk_err("vkCreateDevice"))?;
        // SAFETY: queue 0 of the family created above.
        let queue = unsafe { device.get_device_queue(chosen.family, 0) };
        // SAFETY: the physical device belongs to this instance.
        let memory = unsafe { instance.get_physical_device_memory_properties(chosen.physical) };

        let info = DeviceInfo {
            name: chosen.name.clone(),
            vendor_id: chosen.props.vendor_id,
            vendor,
            device_type: device_type_name(chosen.props.device_type).to_owned(),
            api_version: version_string(chosen.props.api_version),
            driver,
            cpu_fallback: chosen.props.device_type == vk::PhysicalDeviceType::CPU,
            timestamps: chosen.timestamp_bits > 0 && chosen.props.limits.timestamp_period > 0.0,
            all_devices,
        };
        Ok((
            info,
            device,
            queue,
            chosen.family,
            memory,
            f64::from(chosen.props.limits.timestamp_period),
        ))
    }

    /// Index of a memory type allowed by `bits` with all of `flags`, trying each set in order.
    fn memory_type(
        &self,
        bits: u32,
        preferences: &[vk::MemoryPropertyFlags],
    ) -> Option<(u32, vk::MemoryPropertyFlags)> {
        preferences.iter().find_map(|&flags| {
            (0..self.memory.memory_type_count).find_map(|i| {
                let t = self.memory.memory_types[i as usize];
                (bits & (1 << i) != 0 && t.property_flags.contains(flags))
                    .then_some((i, t.property_flags))
            })
        })
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: renderers hold an `Arc<VulkanContext>`, so none is alive now; waiting idle
        // makes sure no submitted work still uses the device.
        unsafe {
            let _ = self.device.device_wait_idle();
            self.device.destroy_device(None);
            self.instance.destroy_instance(None);
        }
    }
}

/// A buffer with its memory, mapped for its whole life.
struct MappedBuffer {
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
    ptr: *mut c_void,
    size: usize,
    coherent: bool,
}

struct Slot {
    image: vk::Image,
    image_memory: vk::DeviceMemory,
    view: vk::ImageView,
    framebuffer: vk::Framebuffer,
    readback: MappedBuffer,
    instances: MappedBuffer,
    command: vk::CommandBuffer,
    fence: vk::Fence,
    in_flight: bool,
}

pub(super) struct Renderer {
    pub(super) width: u32,
    pub(super) height: u32,
    render_pass: vk::RenderPass,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
    pool: vk::CommandPool,
    queries: vk::QueryPool,
    slots: Vec<Slot>,
    ctx: Arc<super::VulkanContext>,
}

// SAFETY: the raw mapped pointers are only touched through `&mut self`, and Vulkan handles may be
// used from any thread when access is externally synchronised, which `&mut self` guarantees.
unsafe impl Send for Renderer {}

impl Renderer {
    pub(super) fn new(ctx: Arc<super::VulkanContext>, width: u32, height: u32) -> Result<Self> {
        let mut r = Self {
            width,
            height,
            render_pass: vk::RenderPass::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
            pool: vk::CommandPool::null(),
            queries: vk::QueryPool::null(),
            slots: Vec::with_capacity(FRAMES_IN_FLIGHT),
            ctx,
        };
        // On any failure `r` is dropped, and Drop destroys whatever was created (null handles
        // are ignored by vkDestroy*).
        r.create_pipeline()?;
        r.create_slots()?;
        Ok(r)
    }

    fn dev(&self) -> &ash::Device {
        &self.ctx.inner.device
    }

    fn create_pipeline(&mut self) -> Result<()> {
        let ctx = Arc::clone(&self.ctx);
        let dev = &ctx.inner.device;
        let attachment = [vk::AttachmentDescription::default()
            .format(FORMAT)
            .samples(vk::SampleCountFlags::TYPE_1)
            .load_op(vk::AttachmentLoadOp::CLEAR)
            .store_op(vk::AttachmentStoreOp::STORE)
            .initial_layout(vk::ImageLayout::UNDEFINED)
            .final_layout(vk::ImageLayout::TRANSFER_SRC_OPTIMAL)];
        let color_ref = [vk::AttachmentReference::default()
            .attachment(0)
            .layout(vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL)];
        let subpass = [vk::SubpassDescription::default()
            .pipeline_bind_point(vk::PipelineBindPoint::GRAPHICS)
            .color_attachments(&color_ref)];
        // The copy after the pass must see the finished colour writes.
        let deps = [
            vk::SubpassDependency::default()
                .src_subpass(vk::SUBPASS_EXTERNAL)
                .dst_subpass(0)
                .src_stage_mask(vk::PipelineStageFlags::TRANSFER)
                .dst_stage_mask(vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT)
                .src_access_mask(vk::AccessFlags::TRANSFER_READ)
                .dst_access_mask(vk::AccessFlags::COLOR_ATTACHMENT_WRITE),
            vk::SubpassDependency::default()
                .src_subpass(0)
                .dst_subpass(vk::SUBPASS_EXTERNAL)
                .src_stage_mask(vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT)
                .dst_stage_mask(vk::PipelineStageFlags::TRANSFER)
                .src_access_mask(vk::AccessFlags::COLOR_ATTACHMENT_WRITE)
                .dst_access_mask(vk::AccessFlags::TRANSFER_READ),
        ];
        let rp_info = vk::RenderPassCreateInfo::default()
            .attachments(&attachment)
            .subpasses(&subpass)
            .dependencies(&deps);
        // SAFETY: all referenced arrays live until the call returns.
        self.render_pass = unsafe { dev.create_render_pass(&rp_info, None) }
            .map_err(vk_err("vkCreateRenderPass"))?;

        let push = [vk::PushConstantRange::default()
            .stage_flags(vk::ShaderStageFlags::VERTEX)
            .offset(0)
            .size(8)];
        let layout_info = vk::PipelineLayoutCreateInfo::default().push_constant_ranges(&push);
        // SAFETY: as above.
        self.layout = unsafe { dev.create_pipeline_layout(&layout_info, None) }
            .map_err(vk_err("vkCreatePipelineLayout"))?;

        // include_bytes! data is not 4-byte aligned; read_spv copies into u32 words.
        let vert_code = ash::util::read_spv(&mut std::io::Cursor::new(VERT_SPV))
            .map_err(|e| Error::Vulkan(format!("vertex shader SPIR-V: {e}")))?;
        let frag_code = ash::util::read_spv(&mut std::io::Cursor::new(FRAG_SPV))
            .map_err(|e| Error::Vulkan(format!("fragment shader SPIR-V: {e}")))?;
        // SAFETY: the code is SPIR-V produced by glslc at build time.
        let vert = unsafe {
            dev.create_shader_module(
                &vk::ShaderModuleCreateInfo::default().code(&vert_code),
                None,
            )
        }
        .map_err(vk_err("vkCreateShaderModule"))?;
        // SAFETY: as above.
        let frag = match unsafe {
            dev.create_shader_module(
                &vk::ShaderModuleCreateInfo::default().code(&frag_code),
                None,
            )
        } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: `vert` is unused by anything.
                unsafe { dev.destroy_shader_module(vert, None) };
                return Err(vk_err("vkCreateShaderModule")(e));
            }
        };

        let stages = [
            vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::VERTEX)
                .module(vert)
                .name(c"main"),
            vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::FRAGMENT)
                .module(frag)
                .name(c"main"),
        ];
        let bindings = [vk::VertexInputBindingDescription::default()
            .binding(0)
            .stride(std::mem::size_of::<Rect>() as u32)
            .input_rate(vk::VertexInputRate::INSTANCE)];
        let attributes = [
            vk::VertexInputAttributeDescription::default()
                .location(0)
                .binding(0)
                .format(vk::Format::R32G32B32A32_SFLOAT)
                .offset(0),
            vk::VertexInputAttributeDescription::default()
                .location(1)
                .binding(0)
                .format(vk::Format::R32G32B32A32_SFLOAT)
                .offset(16),
        ];
        let vertex_input = vk::PipelineVertexInputStateCreateInfo::default()
            .vertex_binding_descriptions(&bindings)
            .vertex_attribute_descriptions(&attributes);
        let assembly = vk::PipelineInputAssemblyStateCreateInfo::default()
            .topology(vk::PrimitiveTopology::TRIANGLE_LIST);
        let viewport = [vk::Viewport {
            x: 0.0,
            y: 0.0,
            width: self.width as f32,
            height: self.height as f32,
            min_depth: 0.0,
            max_depth: 1.0,
        }];
        let scissor = [vk::Rect2D {
            offset: vk::Offset2D { x: 0, y: 0 },
            extent: vk::Extent2D {
                width: self.width,
                height: self.height,
            },
        }];
        let viewport_state = vk::PipelineViewportStateCreateInfo::default()
            .viewports(&viewport)
            .scissors(&scissor);
        let raster = vk::PipelineRasterizationStateCreateInfo::default()
            .polygon_mode(vk::PolygonMode::FILL)
            .cull_mode(vk::CullModeFlags::NONE)
            .line_width(1.0);
        let multisample = vk::PipelineMultisampleStateCreateInfo::default()
            .rasterization_samples(vk::SampleCountFlags::TYPE_1);
        let blend_attachment = [vk::PipelineColorBlendAttachmentState::default()
            .blend_enable(true)
            .src_color_blend_factor(vk::BlendFactor::SRC_ALPHA)
            .dst_color_blend_factor(vk::BlendFactor::ONE_MINUS_SRC_ALPHA)
            .color_blend_op(vk::BlendOp::ADD)
            .src_alpha_blend_factor(vk::BlendFactor::ONE)
            .dst_alpha_blend_factor(vk::BlendFactor::ONE_MINUS_SRC_ALPHA)
            .alpha_blend_op(vk::BlendOp::ADD)
            .color_write_mask(vk::ColorComponentFlags::RGBA)];
        let blend = vk::PipelineColorBlendStateCreateInfo::default().attachments(&blend_attachment);
        let info = [vk::GraphicsPipelineCreateInfo::default()
            .stages(&stages)
            .vertex_input_state(&vertex_input)
            .input_assembly_state(&assembly)
            .viewport_state(&viewport_state)
            .rasterization_state(&raster)
            .multisample_state(&multisample)
            .color_blend_state(&blend)
            .layout(self.layout)
            .render_pass(self.render_pass)
            .subpass(0)];
        // SAFETY: every state struct referenced lives until the call returns; the layout and
        // render pass were created above on this device.
        let result =
            unsafe { dev.create_graphics_pipelines(vk::PipelineCache::null(), &info, None) };
        // SAFETY: pipeline creation is over; the modules are no longer needed.
        unsafe {
            dev.destroy_shader_module(vert, None);
            dev.destroy_shader_module(frag, None);
        }
        self.pipeline = result.map_err(|(_, e)| vk_err("vkCreateGraphicsPipelines")(e))?[0];

        let pool_info = vk::CommandPoolCreateInfo::default()
            .queue_family_index(ctx.inner.queue_family)
            .flags(vk::CommandPoolCreateFlags::RESET_COMMAND_BUFFER);
        // SAFETY: the family index is the one the device's queue came from.
        self.pool = unsafe { dev.create_command_pool(&pool_info, None) }
            .map_err(vk_err("vkCreateCommandPool"))?;
        if ctx.inner.info.timestamps {
            let q = vk::QueryPoolCreateInfo::default()
                .query_type(vk::QueryType::TIMESTAMP)
                .query_count(QUERIES_PER_SLOT * FRAMES_IN_FLIGHT as u32);
            // SAFETY: timestamps are supported on this queue family (checked at device open).
            self.queries =
                unsafe { dev.create_query_pool(&q, None) }.map_err(vk_err("vkCreateQueryPool"))?;
        }
        Ok(())
    }

    fn create_buffer(
        &self,
        size: usize,
        usage: vk::BufferUsageFlags,
        prefs: &[vk::MemoryPropertyFlags],
    ) -> Result<MappedBuffer> {
        let dev = self.dev();
        let info = vk::BufferCreateInfo::default()
            .size(size as u64)
            .usage(usage)
            .sharing_mode(vk::SharingMode::EXCLUSIVE);
        // SAFETY: a plain exclusive buffer of non-zero size.
        let buffer = unsafe { dev.create_buffer(&info, None) }.map_err(vk_err("vkCreateBuffer"))?;
        // SAFETY: `buffer` was just created on this device.
        let req = unsafe { dev.get_buffer_memory_requirements(buffer) };
        let Some((type_index, flags)) = self.ctx.inner.memory_type(req.memory_type_bits, prefs)
        else {
            // SAFETY: unused buffer.
            unsafe { dev.destroy_buffer(buffer, None) };
            return Err(Error::Vulkan(
                "no host-visible memory type for the readback buffer".into(),
            ));
        };
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: the type index satisfies the buffer's requirements.
        let memory = match unsafe { dev.allocate_memory(&alloc, None) } {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unused buffer.
                unsafe { dev.destroy_buffer(buffer, None) };
                return Err(vk_err("vkAllocateMemory")(e));
            }
        };
        // SAFETY: fresh memory of a host-visible type, bound once at offset 0, mapped whole.
        let ptr = unsafe {
            dev.bind_buffer_memory(buffer, memory, 0).and_then(|()| {
                dev.map_memory(memory, 0, vk::WHOLE_SIZE, vk::MemoryMapFlags::empty())
            })
        };
        match ptr {
            Ok(ptr) => Ok(MappedBuffer {
                buffer,
                memory,
                ptr,
                size,
                coherent: flags.contains(vk::MemoryPropertyFlags::HOST_COHERENT),
            }),
            Err(e) => {
                // SAFETY: neither handle is in use.
                unsafe {
                    dev.destroy_buffer(buffer, None);
                    dev.free_memory(memory, None);
                }
                Err(vk_err("vkMapMemory")(e))
            }
        }
    }

    fn create_slots(&mut self) -> Result<()> {
        let frame_bytes = self.width as usize * self.height as usize * 4;
        for _ in 0..FRAMES_IN_FLIGHT {
            let host = vk::MemoryPropertyFlags::HOST_VISIBLE;
            // Cached memory makes CPU reads of the frame fast on real GPUs.
            let readback = self.create_buffer(
                frame_bytes,
                vk::BufferUsageFlags::TRANSFER_DST,
                &[
                    host | vk::MemoryPropertyFlags::HOST_CACHED
                        | vk::MemoryPropertyFlags::HOST_COHERENT,
                    host | vk::MemoryPropertyFlags::HOST_CACHED,
                    host | vk::MemoryPropertyFlags::HOST_COHERENT,
                ],
            )?;
            let instances = match self.create_buffer(
                MAX_RECTS * std::mem::size_of::<Rect>(),
                vk::BufferUsageFlags::VERTEX_BUFFER,
                &[host | vk::MemoryPropertyFlags::HOST_COHERENT],
            ) {
                Ok(b) => b,
                Err(e) => {
                    self.destroy_buffer(&readback);
                    return Err(e);
                }
            };
            let mut slot = Slot {
                image: vk::Image::null(),
                image_memory: vk::DeviceMemory::null(),
                view: vk::ImageView::null(),
                framebuffer: vk::Framebuffer::null(),
                readback,
                instances,
                command: vk::CommandBuffer::null(),
                fence: vk::Fence::null(),
                in_flight: false,
            };
            let result = self.fill_slot(&mut slot);
            self.slots.push(slot);
            result?;
        }
        Ok(())
    }

    fn fill_slot(&self, slot: &mut Slot) -> Result<()> {
        let dev = self.dev();
        let image_info = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(FORMAT)
            .extent(vk::Extent3D {
                width: self.width,
                height: self.height,
                depth: 1,
            })
            .mip_levels(1)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(vk::ImageUsageFlags::COLOR_ATTACHMENT | vk::ImageUsageFlags::TRANSFER_SRC)
            .initial_layout(vk::ImageLayout::UNDEFINED);
        // SAFETY: a 2D colour image in a format every Vulkan device renders to.
        slot.image =
            unsafe { dev.create_image(&image_info, None) }.map_err(vk_err("vkCreateImage"))?;
        // SAFETY: the image was just created on this device.
        let req = unsafe { dev.get_image_memory_requirements(slot.image) };
        let (type_index, _) = self
            .ctx
            .inner
            .memory_type(
                req.memory_type_bits,
                &[
                    vk::MemoryPropertyFlags::DEVICE_LOCAL,
                    vk::MemoryPropertyFlags::empty(),
                ],
            )
            .ok_or_else(|| Error::Vulkan("no memory type for the render target".into()))?;
        let alloc = vk::MemoryAllocateInfo::default()
            .allocation_size(req.size)
            .memory_type_index(type_index);
        // SAFETY: the memory type satisfies the image's requirements; bound once at offset 0.
        unsafe {
            slot.image_memory = dev
                .allocate_memory(&alloc, None)
                .map_err(vk_err("vkAllocateMemory"))?;
            dev.bind_image_memory(slot.image, slot.image_memory, 0)
                .map_err(vk_err("vkBindImageMemory"))?;
        }
        let view_info = vk::ImageViewCreateInfo::default()
            .image(slot.image)
            .view_type(vk::ImageViewType::TYPE_2D)
            .format(FORMAT)
            .subresource_range(color_range());
        // SAFETY: the image has memory bound and the view matches its format.
        slot.view = unsafe { dev.create_image_view(&view_info, None) }
            .map_err(vk_err("vkCreateImageView"))?;
        let views = [slot.view];
        let fb_info = vk::FramebufferCreateInfo::default()
            .render_pass(self.render_pass)
            .attachments(&views)
            .width(self.width)
            .height(self.height)
            .layers(1);
        // SAFETY: the view is compatible with the render pass's single attachment.
        slot.framebuffer = unsafe { dev.create_framebuffer(&fb_info, None) }
            .map_err(vk_err("vkCreateFramebuffer"))?;
        let cb_info = vk::CommandBufferAllocateInfo::default()
            .command_pool(self.pool)
            .level(vk::CommandBufferLevel::PRIMARY)
            .command_buffer_count(1);
        // SAFETY: the pool belongs to this device and is used only by this renderer.
        slot.command = unsafe { dev.allocate_command_buffers(&cb_info) }
            .map_err(vk_err("vkAllocateCommandBuffers"))?[0];
        // SAFETY: plain unsignalled fence.
        slot.fence = unsafe { dev.create_fence(&vk::FenceCreateInfo::default(), None) }
            .map_err(vk_err("vkCreateFence"))?;
        Ok(())
    }

    fn destroy_buffer(&self, b: &MappedBuffer) {
        // SAFETY: called only when the GPU no longer uses the buffer (after a fence wait or
        // before any submission); unmapping happens implicitly on free.
        unsafe {
            self.dev().destroy_buffer(b.buffer, None);
            self.dev().free_memory(b.memory, None);
        }
    }

    pub(super) fn submit(&mut self, index: usize, draw: &DrawList) -> Result<()> {
        if self.slots[index].in_flight {
            return Err(Error::Vulkan(
                "every frame slot holds an unread frame; read a frame before submitting another"
                    .into(),
            ));
        }
        let n = draw.rects.len().min(MAX_RECTS);
        let slot = &self.slots[index];
        // SAFETY: the slot is not in flight, so the GPU is not reading the instance buffer; the
        // mapping is `MAX_RECTS` rects long and `n <= MAX_RECTS`; `Rect` is `repr(C)` f32s.
        unsafe {
            std::ptr::copy_nonoverlapping(
                draw.rects.as_ptr(),
                slot.instances.ptr.cast::<Rect>(),
                n,
            );
        }
        let dev = self.dev();
        let cb = slot.command;
        let q0 = index as u32 * QUERIES_PER_SLOT;
        let timestamps = self.queries != vk::QueryPool::null();
        let clear = [vk::ClearValue {
            color: vk::ClearColorValue {
                float32: draw.clear,
            },
        }];
        let target = [self.width as f32, self.height as f32];
        let mut push = [0u8; 8];
        push[..4].copy_from_slice(&target[0].to_ne_bytes());
        push[4..].copy_from_slice(&target[1].to_ne_bytes());
        let copy = [vk::BufferImageCopy::default()
            .buffer_offset(0)
            .image_subresource(vk::ImageSubresourceLayers {
                aspect_mask: vk::ImageAspectFlags::COLOR,
                mip_level: 0,
                base_array_layer: 0,
                layer_count: 1,
            })
            .image_extent(vk::Extent3D {
                width: self.width,
                height: self.height,
                depth: 1,
            })];
        let to_host = [vk::BufferMemoryBarrier::default()
            .src_access_mask(vk::AccessFlags::TRANSFER_WRITE)
            .dst_access_mask(vk::AccessFlags::HOST_READ)
            .src_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .dst_queue_family_index(vk::QUEUE_FAMILY_IGNORED)
            .buffer(slot.readback.buffer)
            .offset(0)
            .size(vk::WHOLE_SIZE)];
        let pass = vk::RenderPassBeginInfo::default()
            .render_pass(self.render_pass)
            .framebuffer(slot.framebuffer)
            .render_area(vk::Rect2D {
                offset: vk::Offset2D { x: 0, y: 0 },
                extent: vk::Extent2D {
                    width: self.width,
                    height: self.height,
                },
            })
            .clear_values(&clear);
        // SAFETY: the command buffer is not pending (its fence was waited on in `read`), every
        // handle recorded belongs to this renderer, and the image is in TRANSFER_SRC_OPTIMAL
        // (the render pass's final layout) when copied.
        unsafe {
            dev.reset_command_buffer(cb, vk::CommandBufferResetFlags::empty())
                .map_err(vk_err("vkResetCommandBuffer"))?;
            dev.begin_command_buffer(
                cb,
                &vk::CommandBufferBeginInfo::default()
                    .flags(vk::CommandBufferUsageFlags::ONE_TIME_SUBMIT),
            )
            .map_err(vk_err("vkBeginCommandBuffer"))?;
            if timestamps {
                dev.cmd_reset_query_pool(cb, self.queries, q0, QUERIES_PER_SLOT);
                dev.cmd_write_timestamp(cb, vk::PipelineStageFlags::TOP_OF_PIPE, self.queries, q0);
            }
            dev.cmd_begin_render_pass(cb, &pass, vk::SubpassContents::INLINE);
            dev.cmd_bind_pipeline(cb, vk::PipelineBindPoint::GRAPHICS, self.pipeline);
            dev.cmd_push_constants(cb, self.layout, vk::ShaderStageFlags::VERTEX, 0, &push);
            dev.cmd_bind_vertex_buffers(cb, 0, &[slot.instances.buffer], &[0]);
            if n > 0 {
                dev.cmd_draw(cb, 6, n as u32, 0, 0);
            }
            dev.cmd_end_render_pass(cb);
            if timestamps {
                dev.cmd_write_timestamp(
                    cb,
                    vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT,
                    self.queries,
                    q0 + 1,
                );
            }
            dev.cmd_copy_image_to_buffer(
                cb,
                slot.image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                slot.readback.buffer,
                &copy,
            );
            dev.cmd_pipeline_barrier(
                cb,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::HOST,
                vk::DependencyFlags::empty(),
                &[],
                &to_host,
                &[],
            );
            if timestamps {
                dev.cmd_write_timestamp(cb, vk::PipelineStageFlags::TRANSFER, self.queries, q0 + 2);
            }
            dev.end_command_buffer(cb)
                .map_err(vk_err("vkEndCommandBuffer"))?;
        }
        let cbs = [cb];
        let submit = [vk::SubmitInfo::default().command_buffers(&cbs)];
        let queue = self
            .ctx
            .inner
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        // SAFETY: the queue is externally synchronised by its mutex; the fence is unsignalled.
        unsafe { dev.queue_submit(*queue, &submit, slot.fence) }
            .map_err(vk_err("vkQueueSubmit"))?;
        drop(queue);
        self.slots[index].in_flight = true;
        Ok(())
    }

    pub(super) fn read<R>(
        &mut self,
        index: usize,
        f: impl FnOnce(&RgbaFrame<'_>) -> R,
    ) -> Result<(R, GpuTimings)> {
        let slot = &self.slots[index];
        if !slot.in_flight {
            return Err(Error::Vulkan("frame slot read twice".into()));
        }
        let dev = self.dev();
        // SAFETY: the fence was submitted with this slot's command buffer.
        unsafe {
            dev.wait_for_fences(&[slot.fence], true, u64::MAX)
                .map_err(vk_err("vkWaitForFences"))?;
            dev.reset_fences(&[slot.fence])
                .map_err(vk_err("vkResetFences"))?;
        }
        let mut timings = GpuTimings::default();
        if self.queries != vk::QueryPool::null() {
            let mut stamps = [0u64; QUERIES_PER_SLOT as usize];
            // SAFETY: the three queries were written by the completed command buffer.
            let ok = unsafe {
                dev.get_query_pool_results(
                    self.queries,
                    index as u32 * QUERIES_PER_SLOT,
                    &mut stamps,
                    vk::QueryResultFlags::TYPE_64,
                )
            };
            if ok.is_ok() {
                let ms = |a: u64, b: u64| {
                    b.saturating_sub(a) as f64 * self.ctx.inner.timestamp_period_ns / 1e6
                };
                timings.render_ms = Some(ms(stamps[0], stamps[1]));
                timings.copy_ms = Some(ms(stamps[1], stamps[2]));
            }
        }
        if !slot.readback.coherent {
            let range = [vk::MappedMemoryRange::default()
                .memory(slot.readback.memory)
                .offset(0)
                .size(vk::WHOLE_SIZE)];
            // SAFETY: the memory is mapped and the GPU is done with it.
            unsafe { dev.invalidate_mapped_memory_ranges(&range) }
                .map_err(vk_err("vkInvalidateMappedMemoryRanges"))?;
        }
        // SAFETY: the mapping is `size` bytes long and the GPU finished writing it (fence
        // waited, host barrier recorded); `&mut self` keeps the slot from being resubmitted
        // while the slice lives.
        let data = unsafe {
            std::slice::from_raw_parts(slot.readback.ptr.cast::<u8>(), slot.readback.size)
        };
        let frame = RgbaFrame {
            order: crate::convert::PixelOrder::Rgba,
            data,
            stride: self.width as usize * 4,
            width: self.width,
            height: self.height,
        };
        let out = f(&frame);
        self.slots[index].in_flight = false;
        Ok((out, timings))
    }
}

fn color_range() -> vk::ImageSubresourceRange {
    vk::ImageSubresourceRange {
        aspect_mask: vk::ImageAspectFlags::COLOR,
        base_mip_level: 0,
        level_count: 1,
        base_array_layer: 0,
        layer_count: 1,
    }
}

impl Drop for Renderer {
    fn drop(&mut self) {
        let dev = self.ctx.inner.device.clone();
        let fences: Vec<vk::Fence> = self
            .slots
            .iter()
            .filter(|s| s.in_flight)
            .map(|s| s.fence)
            .collect();
        // SAFETY: waiting on our own submitted fences first means the GPU no longer uses any
        // handle destroyed below; null handles are ignored by vkDestroy*.
        unsafe {
            if !fences.is_empty() {
                let _ = dev.wait_for_fences(&fences, true, u64::MAX);
            }
            for s in &self.slots {
                dev.destroy_fence(s.fence, None);
                dev.destroy_framebuffer(s.framebuffer, None);
                dev.destroy_image_view(s.view, None);
                dev.destroy_image(s.image, None);
                dev.free_memory(s.image_memory, None);
            }
        }
        for s in &self.slots {
            self.destroy_buffer(&s.readback);
            self.destroy_buffer(&s.instances);
        }
        // SAFETY: as above; destroying the pool frees its command buffers.
        unsafe {
            dev.destroy_command_pool(self.pool, None);
            dev.destroy_query_pool(self.queries, None);
            dev.destroy_pipeline(self.pipeline, None);
            dev.destroy_pipeline_layout(self.layout, None);
            dev.destroy_render_pass(self.render_pass, None);
        }
    }
}

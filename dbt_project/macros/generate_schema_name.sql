{% macro generate_schema_name(custom_schema_name, node) -%}
    {#- Layers live in schemas named as they are (staging, intermediate, marts), not target_schema_layer. -#}
    {{ (custom_schema_name or target.schema) | trim }}
{%- endmacro %}

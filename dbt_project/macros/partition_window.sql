{% macro iso_date_var(name) -%}
    {#- A date var as a SQL literal; anything but YYYY-MM-DD is refused before it reaches SQL. -#}
    {%- set value = var(name) | string -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
        {{ exceptions.raise_compiler_error("var " ~ name ~ "=" ~ value ~ " is not a YYYY-MM-DD date") }}
    {%- endif -%}
    date '{{ value }}'
{%- endmacro %}

{% macro window_start() -%}
    {{ iso_date_var('start_date') }}
{%- endmacro %}

{% macro window_end() -%}
    {{ iso_date_var('end_date') }}
{%- endmacro %}

{% macro label_cutoff() -%}
    {#- The instant labels are known at: a UTC timestamp literal, or none for every report held. -#}
    {%- set value = var('label_cutoff') | string -%}
    {%- if value == '' -%}
        {{ return(none) }}
    {%- endif -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}([ T][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,6})?)?)?$', value) -%}
        {{ exceptions.raise_compiler_error("var label_cutoff=" ~ value ~ " is not an ISO date or timestamp") }}
    {%- endif -%}
    {%- if value | length == 10 -%}
        {%- set value = value ~ ' 00:00:00' -%}
    {%- endif -%}
    {{ return("timestamptz '" ~ value ~ "+00'") }}
{%- endmacro %}

{% macro get_incremental_partition_window_sql(arg_dict) -%}
    {#- Replace the run's partition window whole (rows that vanished from a re-delivered partition
        included); the materialization runs both statements in one transaction. -#}
    {%- set column = config.require('partition_column') -%}
    {%- set columns_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }}
    where {{ column }} >= {{ window_start() }} and {{ column }} < {{ window_end() }};

    insert into {{ arg_dict['target_relation'] }} ({{ columns_csv }})
    select {{ columns_csv }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}

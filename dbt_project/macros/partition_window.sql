{% macro build_var(name) -%}
    {#- A window var (start_date, end_date): var(name) when given (--vars, a unit test's overrides), else the
        environment's DBT_<NAME>, else every partition. Dagster passes the window through the environment
        so that its command line, and so dbt's parse state, is the same on every run: each step reuses the
        manifest prepared for this code version instead of re-parsing the project, which dbt does whenever
        --vars change. The environment is read only while executing, never while parsing, so dbt does not
        record it as parse input either. -#}
    {%- set every_partition = {'start_date': '1900-01-01', 'end_date': '9999-12-31'} -%}
    {%- if var(name, none) is not none -%}
        {{ return(var(name) | string) }}
    {%- endif -%}
    {%- if not execute -%}
        {{ return(every_partition[name]) }}
    {%- endif -%}
    {{ return(env_var('DBT_' ~ name | upper, every_partition[name]) | string) }}
{%- endmacro %}

{% macro iso_date_var(name, lookback_days=0) -%}
    {#- A date var as a SQL literal, ``lookback_days`` earlier; anything but YYYY-MM-DD is refused before it
        reaches SQL. -#}
    {%- set value = build_var(name) -%}
    {%- if not modules.re.match('^[0-9]{4}-[0-9]{2}-[0-9]{2}$', value) -%}
        {{ exceptions.raise_compiler_error("var " ~ name ~ "=" ~ value ~ " is not a YYYY-MM-DD date") }}
    {%- endif -%}
    {%- set day = modules.datetime.datetime.strptime(value, '%Y-%m-%d').date() -%}
    date '{{ (day - modules.datetime.timedelta(days=lookback_days | int)).isoformat() }}'
{%- endmacro %}

{% macro window_start(lookback_days=0) -%}
    {{ iso_date_var('start_date', lookback_days) }}
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
    {#- Replace the model's window whole (rows that vanished from a re-delivered partition included): the
        run's days, and before them the model's ``lookback_days`` (the days whose labels a late fraud report
        can still change). The materialization runs both statements in one transaction. -#}
    {%- set column = config.require('partition_column') -%}
    {%- set columns_csv = get_quoted_csv(arg_dict['dest_columns'] | map(attribute='name')) -%}
    delete from {{ arg_dict['target_relation'] }}
    where {{ column }} >= {{ window_start(config.get('lookback_days', 0)) }} and {{ column }} < {{ window_end() }};

    insert into {{ arg_dict['target_relation'] }} ({{ columns_csv }})
    select {{ columns_csv }} from {{ arg_dict['temp_relation'] }}
{%- endmacro %}
